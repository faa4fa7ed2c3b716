"""ClickHouse sink: rows/s from Kafka into the embedded engine, next to a bare insert of the
same rows into the same engine and to the sink decoding every record in Python, and the lag
from topic to table under load."""

from __future__ import annotations

import gc
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from rich.progress import Progress

from bench._figures import Figure
from bench._stack import kafka
from sluice.avro import SchemaSet, SingleObjectSerde
from sluice.clickhouse import connect, migrate
from sluice.kafka import TopicNames, ensure_topics, entity_key, topic_specs
from sluice.kafka.io import AvroProducer
from streams.sink.rows import LINEAGE, ROUTES
from streams.sink.sink import ClickHouseSink

SUITE = "sink"


def _serves(n: int, now_ms: int) -> list[dict]:
    out = []
    for i in range(n):
        sid = str(uuid.UUID(int=i + 1))
        out.append({"event_id": sid, "serve_id": sid, "experiment_id": "bench", "entity": f"e{i % 50}", "unit_id": f"u{i}",
                    "arm": "abcd"[i % 4], "in_experiment": True, "propensity": 0.25, "weights_version": 7, "bucket": i % 10_000,
                    "timestamp": now_ms + i // 1000, "context": {}})
    return out


def _produce(bootstrap: str, topic: str, encoded: list[tuple[bytes, bytes]], rate_per_s: float | None = None) -> None:
    producer = AvroProducer(bootstrap, None, **{"linger.ms": 20, "batch.num.messages": 10_000})  # type: ignore[arg-type]
    started = time.perf_counter()
    for i, (key, value) in enumerate(encoded):
        producer.send_raw(topic, key, value)
        if rate_per_s and i % 1000 == 0:
            ahead = i / rate_per_s - (time.perf_counter() - started)
            if ahead > 0:
                time.sleep(ahead)
    producer.flush(120)


def _join(sink: ClickHouseSink) -> None:
    """Step until the group assigned partitions, so join time stays out of the rates."""
    deadline = time.monotonic() + 60
    while not sink.assigned and time.monotonic() < deadline:
        sink.step()


def _bare_insert_rate(client: Any, records: list[dict]) -> float:
    """Rows/s of the same rows, already built as tuples, inserted in 50k-row batches."""
    route = ROUTES["serves"]
    migrate(client, database="bare")
    rows = [tuple(r[c] for c in route.columns) + ("t", 0, i) for i, r in enumerate(records)]
    started = time.perf_counter()
    for i in range(0, len(rows), 50_000):
        client.insert("bare.serves", rows[i : i + 50_000], column_names=route.columns + LINEAGE)
    return len(rows) / (time.perf_counter() - started)


def _drain_rate(sink: ClickHouseSink, n: int, label: str) -> float:
    """Rows/s of `sink` working off a backlog of `n` messages, group join excluded."""
    _join(sink)
    with Progress(transient=True) as progress:
        task = progress.add_task(label, total=n)
        before = sink.counts.rows_inserted
        started = time.perf_counter()
        while sink.counts.rows_inserted < n:
            sink.step()
            progress.update(task, completed=sink.counts.rows_inserted)
        rate = (n - before) / (time.perf_counter() - started)
    sink.close()
    return rate


def _lags(bootstrap: str, client: Any, serde: SingleObjectSerde, records: list[dict], rate: float) -> list[float]:
    """Topic-to-table lag after each batch (Kafka timestamp of the batch's newest message to
    its commit) while a producer thread sends `records` at `rate` messages/s."""
    names = TopicNames(f"bench-{uuid.uuid4().hex[:8]}")
    ensure_topics(bootstrap, topic_specs(names, partitions=6))
    migrate(client, database="lag")
    # Encoded before the clock starts: encoding in the feeder would compete with the sink for the GIL.
    start_ms = int(time.time() * 1000)
    fresh = [(entity_key("bench", r["entity"]),
              serde.encode("ServeEvent", dict(r, event_id=str(uuid.uuid4()), timestamp=start_ms + int(i / rate * 1000))))
             for i, r in enumerate(records)]
    sink = ClickHouseSink(bootstrap, client, serde, names, database="lag")
    _join(sink)
    sent = threading.Event()

    def feed() -> None:
        _produce(bootstrap, names.serves, fresh, rate_per_s=rate)
        sent.set()

    feeder = threading.Thread(target=feed)
    feeder.start()
    lags: list[float] = []
    while not (sent.is_set() and sink.counts.rows_inserted >= len(fresh)):
        if sink.step():
            lags.append(sink.counts.lag_s)
    feeder.join()
    sink.close()
    return lags


def run(quick: bool) -> list[Figure]:
    n = 100_000 if quick else 1_000_000
    serde = SingleObjectSerde(SchemaSet.bundled())
    records = _serves(n, int(time.time() * 1000))
    encoded = [(entity_key("bench", r["entity"]), serde.encode("ServeEvent", r)) for r in records]
    # The benchmark's own millions of objects stay out of the collector's passes, which would
    # otherwise bill the sink for traversing them; a sink process holds none of them.
    gc.freeze()
    with tempfile.TemporaryDirectory(prefix="sluice-bench-chdb-") as chdir, kafka() as bootstrap:
        client = connect(path=Path(chdir))
        bare_rate = _bare_insert_rate(client, records)

        names = TopicNames(f"bench-{uuid.uuid4().hex[:8]}")
        ensure_topics(bootstrap, topic_specs(names, partitions=6))
        _produce(bootstrap, names.serves, encoded)
        migrate(client, database="sunk")
        sink_rate = _drain_rate(ClickHouseSink(bootstrap, client, serde, names, database="sunk"), n, "sink: backlog")
        # The same backlog again, every record decoded in Python (the path before ClickHouse read the Avro).
        migrate(client, database="sunk_python")
        python_rate = _drain_rate(ClickHouseSink(bootstrap, client, serde, names, database="sunk_python",
                                                 group_id=f"{names.prefix}-python", clickhouse_decodes=False),
                                  n, "sink, decoding in Python: backlog")

        # Lag under load: a steady stream at half the sink's backlog rate.
        rate = min(sink_rate / 2, 100_000)
        lags = _lags(bootstrap, client, serde, records[: n // 2], rate)
        client.close()
    p95 = statistics.quantiles(lags, n=20)[-1] if len(lags) >= 20 else max(lags)
    return [
        Figure(SUITE, f"sink rows/s from a {n:,}-message backlog (ClickHouse decodes the Avro, insert, commit)", sink_rate,
               "rows/s", "higher", "bare insert of the same rows", bare_rate, goal=200_000),
        Figure(SUITE, "sink rows/s from the same backlog, decoding every record in Python", python_rate, "rows/s",
               "higher", "bare insert of the same rows", bare_rate),
        Figure(SUITE, f"topic-to-table lag p95 at {rate:,.0f} rows/s", p95, "s", "lower",
               "lag p50", statistics.median(lags), goal=5.0, note=f"{len(lags)} batches"),
    ]
