"""ClickHouse sink: rows/s from Kafka into the embedded engine, next to a bare insert of the
same rows into the same engine, and the lag from topic to table under load."""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path

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


def run(quick: bool) -> list[Figure]:
    n = 100_000 if quick else 1_000_000
    serde = SingleObjectSerde(SchemaSet.bundled())
    now_ms = int(time.time() * 1000)
    records = _serves(n, now_ms)
    encoded = [(entity_key("bench", r["entity"]), serde.encode("ServeEvent", r)) for r in records]
    route = ROUTES["serves"]
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="sluice-bench-chdb-") as chdir, kafka() as bootstrap:
        client = connect(path=Path(chdir))
        # Baseline: the same rows, already built, inserted in 50k-row batches.
        migrate(client, database="bare")
        rows = [tuple(r[c] for c in route.columns) + ("t", 0, i) for i, r in enumerate(records)]
        started = time.perf_counter()
        for i in range(0, n, 50_000):
            client.insert("bare.serves", rows[i : i + 50_000], column_names=route.columns + LINEAGE)
        bare_rate = n / (time.perf_counter() - started)
        del rows

        names = TopicNames(f"bench-{uuid.uuid4().hex[:8]}")
        ensure_topics(bootstrap, topic_specs(names, partitions=6))
        _produce(bootstrap, names.serves, encoded)
        migrate(client, database="sunk")
        sink = ClickHouseSink(bootstrap, client, serde, names, database="sunk")
        _join(sink)
        with Progress(transient=True) as progress:
            task = progress.add_task("sink: backlog", total=n)
            before = sink.counts.rows_inserted
            started = time.perf_counter()
            while sink.counts.rows_inserted < n:
                sink.step()
                progress.update(task, completed=sink.counts.rows_inserted)
            sink_rate = (n - before) / (time.perf_counter() - started)
        sink.close()
        figures.append(Figure(SUITE, f"sink rows/s from a {n:,}-message backlog (decode, insert, commit)", sink_rate, "rows/s",
                              "higher", "bare insert of the same rows", bare_rate, goal=200_000))

        # Lag under load: a steady stream at half the sink's backlog rate.
        names2 = TopicNames(f"bench-{uuid.uuid4().hex[:8]}")
        ensure_topics(bootstrap, topic_specs(names2, partitions=6))
        migrate(client, database="lag")
        rate = min(sink_rate / 2, 100_000)
        m = n // 2
        fresh = []
        sink2 = ClickHouseSink(bootstrap, client, serde, names2, database="lag")
        lags: list[float] = []
        stop = threading.Event()

        def feed() -> None:
            start_ms = int(time.time() * 1000)
            batch = []
            for i in range(m):
                r = dict(records[i], event_id=str(uuid.uuid4()), timestamp=start_ms + int(i / rate * 1000))
                batch.append((entity_key("bench", r["entity"]), serde.encode("ServeEvent", r)))
            fresh.extend(batch)
            _produce(bootstrap, names2.serves, batch, rate_per_s=rate)
            stop.set()

        _join(sink2)
        feeder = threading.Thread(target=feed)
        feeder.start()
        while not (stop.is_set() and sink2.counts.rows_inserted >= m):
            if sink2.step():
                # Event time is set to the moment the producer meant to send it.
                lags.append(sink2.counts.last_event_lag_s)
        feeder.join()
        sink2.close()
        p95 = statistics.quantiles(lags, n=20)[-1] if len(lags) >= 20 else max(lags)
        figures.append(Figure(SUITE, f"topic-to-table lag p95 at {rate:,.0f} rows/s", p95, "s", "lower",
                              "lag p50", statistics.median(lags), goal=5.0, note=f"{len(lags)} batches"))
        client.close()
    return figures
