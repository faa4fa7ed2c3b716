"""The stream worker against the real broker: `sluice worker` processes, SIGKILLed and
restarted, two at once, fed good and poisoned traffic; the published weight tables are
checked against a recomputation from the produced events."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sluice.core.serve_token import format_serve_id
from sluice.core.spec import spec_from_mapping
from sluice.experiments import ExperimentRegistry
from sluice.kafka import TopicNames, ensure_topics, topic_specs
from sluice.kafka.dlq import read_headers
from sluice.kafka.io import AvroProducer, read_to_end
from sluice.local.kafka import free_loopback_ports

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from stream_support import (  # noqa: E402
    DAY_MS,
    HOUR_MS,
    Traffic,
    WorkerProcess,
    bandit_spec,
    expected_statistics,
    latest_tables,
    wait_for_statistics,
)

pytestmark = pytest.mark.integration
RATES = {"a": 0.03, "b": 0.06, "c": 0.20}


@pytest.fixture
def stream(kafka_bootstrap, topic_prefix, serde, tmp_path):
    """Topics, a running experiment, and a factory of worker processes stopped at the end."""
    ensure_topics(kafka_bootstrap, topic_specs(TopicNames(topic_prefix), partitions=4))
    spec = bandit_spec("exp", list(RATES))
    with ExperimentRegistry(kafka_bootstrap, topic_prefix, serde) as registry:
        registry.apply(spec)
    workers: list[WorkerProcess] = []

    def start(instance: str = "w1", *extra: str) -> WorkerProcess:
        (port,) = free_loopback_ports(1)
        w = WorkerProcess(kafka_bootstrap, topic_prefix, tmp_path / f"{instance}.log", metrics_port=port,
                          extra_args=("--instance-id", f"{topic_prefix}-{instance}", *extra),
                          env={"SLUICE_TOPIC_PARTITIONS": "4"})
        workers.append(w)
        return w

    class Env:
        bootstrap, prefix, specs = kafka_bootstrap, topic_prefix, {"exp": spec}

        def registry(self) -> ExperimentRegistry:
            return ExperimentRegistry(kafka_bootstrap, topic_prefix, serde)

    Env.start = staticmethod(start)
    yield Env()
    for w in workers:
        w.stop()


def traffic_for(entities: list[str], n: int, seed: int, start_ms: int | None = None) -> Traffic:
    traffic = Traffic()
    start = start_ms if start_ms is not None else int(time.time() * 1000) - DAY_MS
    traffic.bandit("exp", entities, RATES, n, start, np.random.default_rng(seed))
    return traffic


def wait_for_weight(stream, serde, entity: str, arm: str, timeout_s: float = 30.0) -> None:
    """Until `entity`'s latest table gives `arm` some weight."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        table = latest_tables(stream.bootstrap, stream.prefix, serde)[("exp", entity)]
        if any(a["arm"] == arm and a["weight"] > 0 for a in table["arms"]):
            return
        time.sleep(0.3)
    raise AssertionError(f"{entity}'s arm {arm} never got weight: {table['arms']}")


def test_weights_move_to_the_best_arm_and_statistics_equal_a_recomputation(stream, serde) -> None:
    worker = stream.start()
    traffic = traffic_for(["site-1", "site-2", "site-3"], 2_000, seed=1)
    traffic.produce(stream.bootstrap, stream.prefix, serde)
    tables = wait_for_statistics(stream.bootstrap, stream.prefix, serde, expected_statistics(traffic, stream.specs))
    for table in tables.values():
        weights = {a["arm"]: a["weight"] for a in table["arms"]}
        assert max(weights, key=weights.get) == "c", table["reason"]
        assert weights["c"] > 0.9
        assert table["version"] >= 1 and "thompson" in table["reason"]
    assert worker.metric("sluice_stream_events_total", topic="serves") == 6_000
    assert worker.metric("sluice_weights_freshness_seconds_count") >= 3
    decisions = [serde.decode(m.value, "Decision").record for m in read_to_end(stream.bootstrap, [f"{stream.prefix}.decisions.v1"])]
    assert {d["entity"] for d in decisions} == {"site-1", "site-2", "site-3"}
    assert all(d["verdict"] in ("CONTINUE", "SHIP", "ITERATE", "KILL") and d["reason"] for d in decisions)


def test_sigkill_mid_stream_loses_and_double_counts_nothing(stream, serde) -> None:
    traffic = traffic_for(["site-1", "site-2"], 6_000, seed=2)
    chunks = np.linspace(0, len(traffic.events), 5, dtype=int)
    worker = stream.start()
    for i, (lo, hi) in enumerate(zip(chunks[:-1], chunks[1:])):
        traffic.produce(stream.bootstrap, stream.prefix, serde, lo, hi)
        if i < 3:
            # Kill as soon as the worker has taken some of this chunk, mid-batch if it can.
            worker.wait_metric_above("sluice_stream_events_total", 0, topic="serves")
            time.sleep(0.05 * i)
            worker.kill()
            worker = stream.start()
    wait_for_statistics(stream.bootstrap, stream.prefix, serde, expected_statistics(traffic, stream.specs))


def test_two_workers_give_the_results_of_one(stream, serde) -> None:
    first, second = stream.start("w1"), stream.start("w2")
    deadline = time.monotonic() + 60
    while True:  # both in the group and the 4 partitions split between them, before any traffic
        owned = []
        for worker in (first, second):
            worker.wait_metric_above("sluice_stream_assigned_partitions", 0)
            owned.append(worker.metric("sluice_stream_assigned_partitions"))
        if sum(owned) == 4:
            break
        assert time.monotonic() < deadline, f"partitions owned: {owned}"
        time.sleep(0.2)
    traffic = traffic_for([f"site-{i}" for i in range(8)], 600, seed=3)
    traffic.produce(stream.bootstrap, stream.prefix, serde)
    wait_for_statistics(stream.bootstrap, stream.prefix, serde, expected_statistics(traffic, stream.specs))
    served = [w.metric("sluice_stream_events_total", topic="serves") for w in (first, second)]
    assert sum(served) == 8 * 600 and min(served) > 0, f"partitions not shared: {served}"


def test_poison_messages_go_to_the_dead_letter_topic_and_the_rest_counts(stream, serde) -> None:
    worker = stream.start()
    traffic = traffic_for(["site-1"], 300, seed=4)
    good = list(traffic.events)
    now = int(time.time() * 1000)
    poison = Traffic()
    poison.serve("exp", "site-1", "no-such-arm", now)
    poison.serve("unknown-exp", "site-1", "a", now)
    poison.serve("exp", "site-1", "a", now + 3 * HOUR_MS)
    bad_propensity = poison.serve("exp", "site-1", "a", now)
    poison.events[-1][2]["propensity"] = 1.5
    poison.reward("exp", "site-1", bad_propensity, float("nan"), now)
    producer = AvroProducer(stream.bootstrap, serde)
    names = TopicNames(stream.prefix)
    for i, (kind, key, record) in enumerate(good):
        producer.send(f"{stream.prefix}.{kind}.v1", key, {"serves": "ServeEvent", "rewards": "RewardEvent"}[kind], record)
        if i % 100 == 50:
            producer.send_raw(names.serves, key, b"\x00garbage")
            producer.send_raw(names.rewards, key, b"\xc3\x01" + b"\x11" * 8 + b"\x02")
    producer.flush()
    poison.produce(stream.bootstrap, stream.prefix, serde)
    wait_for_statistics(stream.bootstrap, stream.prefix, serde, expected_statistics(traffic, stream.specs))
    expected = {"undecodable": 3, "unknown_schema": 3, "unknown_arm": 1, "unknown_experiment": 1,
                "future_timestamp": 1, "invalid_propensity": 1, "invalid_value": 1}
    deadline = time.monotonic() + 30
    while True:
        letters = read_to_end(stream.bootstrap, [names.dlq])
        reasons = [read_headers(m.headers)["sluice.reason"].split(":")[0] for m in letters]
        if len(letters) >= sum(expected.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert {r: reasons.count(r) for r in set(reasons)} == expected
    for m in letters:
        h = read_headers(m.headers)
        assert h["sluice.source.topic"] in (names.serves, names.rewards) and int(h["sluice.source.offset"]) >= 0
    assert worker.metric("sluice_stream_rejected_total", topic="serves", reason="unknown_arm") == 1


def test_late_early_duplicate_and_malformed_rewards(stream, serde) -> None:
    worker = stream.start("w1", "--expire-interval", "0.3")
    start = int(time.time() * 1000) - 3 * DAY_MS
    traffic = Traffic()
    late = traffic.serve("exp", "site-1", "a", start)
    traffic.reward("exp", "site-1", late, 1.0, start + 25 * HOUR_MS)  # attribution window is 24 h
    early = format_serve_id("e" * 24, start + 2 * HOUR_MS, True, "c")
    traffic.reward("exp", "site-1", early, 1.0, start + 2 * HOUR_MS + 10)  # the reward comes first
    traffic.serve("exp", "site-1", "c", start + 2 * HOUR_MS, serve_id=early)
    twice = traffic.serve("exp", "site-1", "b", start + 3 * HOUR_MS)
    traffic.events.append(traffic.events[-1])  # the same serve logged again
    traffic.reward("exp", "site-1", twice, 1.0, start + 3 * HOUR_MS + 10)
    traffic.reward("exp", "site-1", twice, 1.0, start + 3 * HOUR_MS + 20)  # a second click counts once
    traffic.reward("exp", "site-1", "3f2504e0-4f89-41d3-9a0c-0305e82c3301", 1.0, start + HOUR_MS)  # not a token
    traffic.serve("exp", "site-1", "a", start + 52 * HOUR_MS)  # moves event time past every horizon
    traffic.produce(stream.bootstrap, stream.prefix, serde)
    wait_for_statistics(stream.bootstrap, stream.prefix, serde, {("exp", "site-1"): {
        "a": (2, 2, 0.0, 0.0), "b": (1, 1, 1.0, 1.0), "c": (1, 1, 1.0, 1.0)}})
    worker.wait_metric("sluice_stream_attribution_total", 1, outcome="after_window")
    worker.wait_metric("sluice_stream_attribution_total", 1, outcome="duplicate")
    worker.wait_metric("sluice_stream_attribution_total", 1, outcome="duplicate_serve")
    worker.wait_metric("sluice_stream_rejected_total", 1, topic="rewards", reason="invalid_serve_id")
    # The serve ids and rewarded serves of the first hours aged out of the store.
    worker.wait_metric_above("sluice_stream_expired_total", 0, table="records")


def test_the_window_crosses_the_seven_day_edge(stream, serde) -> None:
    stream.start()
    start = int(time.time() * 1000) - 10 * DAY_MS
    old = traffic_for(["site-1"], 200, seed=5, start_ms=start)
    old.produce(stream.bootstrap, stream.prefix, serde)
    wait_for_statistics(stream.bootstrap, stream.prefix, serde, expected_statistics(old, stream.specs))
    new = traffic_for(["site-1"], 200, seed=6, start_ms=start + 7 * DAY_MS + 2 * HOUR_MS)
    new.produce(stream.bootstrap, stream.prefix, serde)
    both = Traffic(old.events + new.events)
    expected = expected_statistics(both, stream.specs)
    assert sum(v[0] for v in expected[("exp", "site-1")].values()) == 200  # the old hours left the window
    tables = wait_for_statistics(stream.bootstrap, stream.prefix, serde, expected)
    table = tables[("exp", "site-1")]
    assert table["window_end"] - table["window_start"] >= 7 * DAY_MS


def test_a_spec_change_takes_effect_without_restart(stream, serde) -> None:
    worker = stream.start()
    first = traffic_for(["site-1"], 200, seed=7)
    first.produce(stream.bootstrap, stream.prefix, serde)
    wait_for_statistics(stream.bootstrap, stream.prefix, serde, expected_statistics(first, stream.specs))

    with stream.registry() as registry:  # a new arm
        registry.apply(bandit_spec("exp", [*RATES, "d"]))
    wait_for_weight(stream, serde, "site-1", "d")

    with stream.registry() as registry:
        paused = registry.set_status("exp", "paused")
    worker.wait_metric("sluice_stream_spec_version", paused.spec_version, experiment="exp")  # the worker acts on it
    version = latest_tables(stream.bootstrap, stream.prefix, serde)[("exp", "site-1")]["version"]
    serves_before = worker.metric("sluice_stream_events_total", topic="serves")
    more = traffic_for(["site-1"], 100, seed=8)
    more.produce(stream.bootstrap, stream.prefix, serde)
    worker.wait_metric("sluice_stream_events_total", serves_before + 100, topic="serves")
    ticks = worker.metric("sluice_stream_publication_ticks_total")
    worker.wait_metric_above("sluice_stream_publication_ticks_total", ticks + 1)  # a running one would have published
    assert latest_tables(stream.bootstrap, stream.prefix, serde)[("exp", "site-1")]["version"] == version

    with stream.registry() as registry:
        resumed = registry.set_status("exp", "running")
    specs = {"exp": resumed}
    tables = wait_for_statistics(stream.bootstrap, stream.prefix, serde,
                                 expected_statistics(Traffic(first.events + more.events), specs))
    assert tables[("exp", "site-1")]["version"] > version


def test_a_busy_entity_never_writes_a_message_over_the_limit_and_survives_a_sigkill(stream, serde) -> None:
    """40,000 live serves of one entity with a 64 KB message limit and batches of up to
    20,000 events (whose serve ids alone take 240 KB): the worker keeps going, through a
    SIGKILL, to the exact statistics, and nothing it wrote is over the limit."""
    limit, options = 64 * 1024, ("--max-message-bytes", str(64 * 1024), "--batch-max", "20000")
    traffic = traffic_for(["busy"], 40_000, seed=9)
    half = len(traffic.events) // 2
    traffic.produce(stream.bootstrap, stream.prefix, serde, 0, half)  # a backlog: the first batches are full
    worker = stream.start("w1", *options)
    worker.wait_metric_above("sluice_stream_events_total", 5_000, topic="serves")
    worker.kill()
    worker = stream.start("w1", *options)
    traffic.produce(stream.bootstrap, stream.prefix, serde, half)
    wait_for_statistics(stream.bootstrap, stream.prefix, serde, expected_statistics(traffic, stream.specs))
    names = TopicNames(stream.prefix)
    written = read_to_end(stream.bootstrap, [names.worker_state, names.weights, names.decisions, names.dlq])
    assert len(written) > 10
    largest = max(len(m.key or b"") + len(m.value or b"") for m in written)
    assert limit // 2 < largest <= limit, largest  # the serve ids of a batch were split to fit
    assert 0 < worker.metric("sluice_stream_largest_message_bytes", topic="worker-state") <= limit


def test_an_arm_added_for_one_entity_leaves_the_other_entities_tables_alone(stream, serde) -> None:
    worker = stream.start()
    first = traffic_for(["site-1", "site-2"], 200, seed=11)
    first.produce(stream.bootstrap, stream.prefix, serde)
    wait_for_statistics(stream.bootstrap, stream.prefix, serde, expected_statistics(first, stream.specs))
    before = latest_tables(stream.bootstrap, stream.prefix, serde)[("exp", "site-2")]

    data = bandit_spec("exp", list(RATES)).model_dump(mode="json")
    data["arms"].append({"name": "d", "values": {"model": "m-d"}, "entities": ["site-1"]})
    with stream.registry() as registry:
        _, scoped = registry.apply(spec_from_mapping(data))
    worker.wait_metric("sluice_stream_spec_version", scoped.spec_version, experiment="exp")
    wait_for_weight(stream, serde, "site-1", "d")
    ticks = worker.metric("sluice_stream_publication_ticks_total")
    worker.wait_metric_above("sluice_stream_publication_ticks_total", ticks + 1)
    after = latest_tables(stream.bootstrap, stream.prefix, serde)[("exp", "site-2")]
    assert after["version"] == before["version"] and "d" not in {a["arm"] for a in after["arms"]}
