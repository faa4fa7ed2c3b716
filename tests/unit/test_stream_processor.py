"""The stream worker's batch logic without Kafka: attribution rules, windows, dead letters,
and idempotence under replays and crashes between state writes."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

from sluice.core.spec import ExperimentSpec
from sluice.kafka.clients import entity_key
from streams.processor import InputEvent, Processor
from streams.publisher import next_weight_table, window_totals
from streams.state import delta_key, partition_of

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from stream_support import DAY_MS, HOUR_MS, Traffic, bandit_spec, expected_statistics  # noqa: E402

NOW = 1_790_000_000_000


class RecordingStore(dict):
    """A dict that remembers the order of writes, like a changelog partition."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self.writes: list[tuple[bytes, bytes]] = []

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self.writes.append((key, value))
        super().__setitem__(key, value)


def to_inputs(traffic: Traffic, serde, start_offsets: dict[str, int] | None = None) -> list[InputEvent]:
    offsets = dict(start_offsets or {"serves": 0, "rewards": 0})
    out = []
    schema = {"serves": "ServeEvent", "rewards": "RewardEvent"}
    for kind, key, record in traffic.events:
        out.append(InputEvent(kind, f"t.{kind}", 0, offsets[kind], key, serde.encode(schema[kind], record), NOW))
        offsets[kind] += 1
    return out


def statistics(store: dict, specs: dict[str, ExperimentSpec]) -> dict:
    """The windowed statistics persisted in the store (as a restarted worker would find
    them), in the shape of `expected_statistics`."""
    out = {}
    for routing, state in Processor(None, specs.get, store, now_ms=lambda: NOW).states.items():
        exp, entity = routing.decode().split("\x1f")
        totals = window_totals(state, specs[exp].window_ms)
        out[(exp, entity)] = {a: (int(t[0]), int(t[1]), float(t[2]), float(t[3]))
                              for a, t in zip(state.arms, totals) if t[0]}
    return out


@pytest.fixture
def spec() -> ExperimentSpec:
    return bandit_spec("e1", ["a", "b", "c"])


def make(serde, specs: dict[str, ExperimentSpec], store: dict | None = None) -> tuple[Processor, dict]:
    store = RecordingStore() if store is None else store
    return Processor(serde, specs.get, store, now_ms=lambda: NOW), store


def test_statistics_equal_the_recomputation(serde, spec) -> None:
    traffic = Traffic()
    traffic.bandit("e1", ["x", "y"], {"a": 0.1, "b": 0.3, "c": 0.5}, 400, NOW - DAY_MS, np.random.default_rng(3))
    processor, store = make(serde, {"e1": spec})
    events = to_inputs(traffic, serde)
    for i in range(0, len(events), 97):  # batches of arbitrary size
        processor.process(events[i:i + 97])
    assert statistics(store, {"e1": spec}) == expected_statistics(traffic, {"e1": spec})


def test_binary_reward_counts_once_and_continuous_sums(serde) -> None:
    binary = bandit_spec("bin", ["a", "b"])
    cont = bandit_spec("cont", ["a", "b"], reward_type="continuous")
    traffic = Traffic()
    s1 = traffic.serve("bin", "x", "a", NOW - HOUR_MS)
    traffic.reward("bin", "x", s1, 1.0, NOW - HOUR_MS + 10)
    traffic.reward("bin", "x", s1, 1.0, NOW - HOUR_MS + 20)  # second click of one serve: not counted
    s2 = traffic.serve("cont", "x", "b", NOW - HOUR_MS)
    traffic.reward("cont", "x", s2, 2.5, NOW - HOUR_MS + 10)
    traffic.reward("cont", "x", s2, 1.5, NOW - HOUR_MS + 20)
    processor, store = make(serde, {"bin": binary, "cont": cont})
    result = processor.process(to_inputs(traffic, serde))
    stats = statistics(store, {"bin": binary, "cont": cont})
    assert stats[("bin", "x")] == {"a": (1, 1, 1.0, 1.0)}
    assert stats[("cont", "x")] == {"b": (1, 1, 4.0, 16.0)}  # one serve with reward 4: sum_sq 4²
    assert result.outcomes["duplicate"] == 1 and result.outcomes["attributed"] == 3


def test_reward_after_window_and_other_rewards_change_nothing(serde, spec) -> None:
    traffic = Traffic()
    sid = traffic.serve("e1", "x", "a", NOW - 2 * DAY_MS)
    traffic.reward("e1", "x", sid, 1.0, NOW - 2 * DAY_MS + 25 * HOUR_MS)  # window is 24 h
    traffic.reward("e1", "x", sid, 1.0, NOW - 2 * DAY_MS + HOUR_MS, name="conversion")
    processor, store = make(serde, {"e1": spec})
    result = processor.process(to_inputs(traffic, serde))
    assert statistics(store, {"e1": spec}) == {("e1", "x"): {"a": (1, 1, 0.0, 0.0)}}
    assert result.outcomes == {"after_window": 1, "other_reward": 1}


def test_a_reward_before_its_serve_waits_for_it(serde, spec) -> None:
    early, late = Traffic(), Traffic()
    early.reward("e1", "x", "s-1", 1.0, NOW - 10)
    late.serve("e1", "x", "b", NOW - 20, serve_id="s-1")
    processor, store = make(serde, {"e1": spec})
    first = processor.process(to_inputs(early, serde))
    assert first.outcomes == {"waiting_for_serve": 1}
    second = processor.process(to_inputs(late, serde, {"serves": 0, "rewards": 1}))
    assert second.outcomes == {"attributed": 1}
    assert statistics(store, {"e1": spec}) == {("e1", "x"): {"b": (1, 1, 1.0, 1.0)}}


def test_serves_outside_the_experiment_are_served_but_not_observations(serde, spec) -> None:
    traffic = Traffic()
    sid = traffic.serve("e1", "x", "a", NOW - 10, in_experiment=False)
    traffic.reward("e1", "x", sid, 1.0, NOW)
    processor, store = make(serde, {"e1": spec})
    result = processor.process(to_inputs(traffic, serde))
    assert statistics(store, {"e1": spec}) == {("e1", "x"): {"a": (1, 0, 0.0, 0.0)}}
    assert result.outcomes == {"outside_experiment": 1}


def test_the_window_slides_in_event_time(serde, spec) -> None:
    old, new = Traffic(), Traffic()
    old.serve("e1", "x", "a", NOW - 8 * DAY_MS)
    old.serve("e1", "x", "b", NOW - 6 * DAY_MS)
    new.serve("e1", "x", "c", NOW)
    new.serve("e1", "x", "a", NOW - 8 * DAY_MS)  # late, and outside the window by now
    processor, store = make(serde, {"e1": spec})
    processor.process(to_inputs(old, serde))
    assert statistics(store, {"e1": spec}) == {("e1", "x"): {"a": (1, 1, 0.0, 0.0), "b": (1, 1, 0.0, 0.0)}}
    result = processor.process(to_inputs(new, serde, {"serves": 2, "rewards": 0}))
    assert result.outcomes == {"too_late": 1}
    assert statistics(store, {"e1": spec}) == {("e1", "x"): {"b": (1, 1, 0.0, 0.0), "c": (1, 1, 0.0, 0.0)}}
    state = processor.states[b"e1\x1fx"]
    assert min(state.hours) >= (NOW - 7 * DAY_MS) // HOUR_MS  # expired hours are gone


@pytest.mark.parametrize("mutate, reason", [
    (lambda ev, serde: b"not avro at all", "undecodable"),
    (lambda ev, serde: b"\xc3\x01" + b"\x00" * 8 + ev.value[10:], "unknown_schema"),
    (lambda ev, serde: ev.value[:-3], "undecodable"),
])
def test_undecodable_bytes_are_dead_letters(serde, spec, mutate, reason) -> None:
    traffic = Traffic()
    traffic.serve("e1", "x", "a", NOW)
    traffic.serve("e1", "x", "b", NOW)
    good, bad = to_inputs(traffic, serde)
    bad = InputEvent(bad.kind, bad.topic, bad.partition, bad.offset, bad.key, mutate(bad, serde), bad.timestamp_ms)
    processor, store = make(serde, {"e1": spec})
    result = processor.process([good, bad])
    assert [(d.event.offset, d.reason) for d in result.dead_letters] == [(1, reason)]
    assert statistics(store, {"e1": spec}) == {("e1", "x"): {"a": (1, 1, 0.0, 0.0)}}


@pytest.mark.parametrize("change, reason", [
    ({"arm": "zzz"}, "unknown_arm"),
    ({"experiment_id": "nope"}, "unknown_experiment"),
    ({"propensity": 0.0}, "invalid_propensity"),
    ({"propensity": math.nan}, "invalid_propensity"),
    ({"timestamp": NOW + 2 * HOUR_MS}, "future_timestamp"),
    ({"entity": "y"}, "wrong_key"),
    ({"serve_id": ""}, "invalid_value"),
])
def test_invalid_serves_are_dead_letters_with_reasons(serde, spec, change, reason) -> None:
    traffic = Traffic()
    traffic.serve("e1", "x", "a", NOW - 5)
    traffic.serve("e1", "x", "b", NOW - 5)
    kind, key, record = traffic.events[1]
    record.update(change)
    if reason != "wrong_key":  # keep the key that of the (changed) experiment and entity
        traffic.events[1] = (kind, entity_key(record["experiment_id"], record["entity"]), record)
    processor, store = make(serde, {"e1": spec})
    result = processor.process(to_inputs(traffic, serde))
    assert [d.reason for d in result.dead_letters] == [reason]
    assert reason in result.dead_letters[0].header
    assert statistics(store, {"e1": spec}) == {("e1", "x"): {"a": (1, 1, 0.0, 0.0)}}


@pytest.mark.parametrize("value", [math.nan, math.inf, 0.5])
def test_invalid_binary_rewards_are_dead_letters(serde, spec, value) -> None:
    traffic = Traffic()
    sid = traffic.serve("e1", "x", "a", NOW - 5)
    traffic.reward("e1", "x", sid, value, NOW)
    processor, _ = make(serde, {"e1": spec})
    result = processor.process(to_inputs(traffic, serde))
    assert [d.reason for d in result.dead_letters] == ["invalid_value"]


def test_a_replayed_batch_changes_nothing(serde, spec) -> None:
    traffic = Traffic()
    traffic.bandit("e1", ["x", "y", "z"], {"a": 0.2, "b": 0.4, "c": 0.6}, 60, NOW - HOUR_MS, np.random.default_rng(5))
    events = to_inputs(traffic, serde)
    processor, store = make(serde, {"e1": spec})
    processor.process(events)
    before, records = dict(store), snapshot(processor)
    store.writes.clear()
    again = processor.process(events)
    assert sum(again.applied.values()) == 0
    assert statistics(store, {"e1": spec}) == statistics(before, {"e1": spec})
    assert snapshot(processor) == records
    assert store.writes == []  # nothing new: nothing written


def snapshot(processor: Processor) -> dict:
    return {(r, sid): rec.to_bytes() for r, recs in processor.records.items() for sid, rec in recs.items()}


@pytest.mark.parametrize("reward_type", ["binary", "continuous"])
def test_a_crash_after_any_write_then_a_replay_gives_the_clean_result(serde, reward_type) -> None:
    """The worker may die after any prefix of a batch's changelog writes has landed; the
    batch is then read again (its offsets were not committed). Whatever the prefix, and
    whatever the new batch boundaries, the result equals a run without the crash."""
    spec = bandit_spec("e1", ["a", "b", "c"], reward_type=reward_type)
    traffic = Traffic()
    rng = np.random.default_rng(11)
    traffic.bandit("e1", ["x", "y"], {"a": 0.3, "b": 0.5, "c": 0.7}, 30, NOW - HOUR_MS, rng)
    for i in range(10):  # rewards that arrive before their serves
        sid = f"early-{i}"
        traffic.reward("e1", "x", sid, 1.0, NOW - HOUR_MS + i)
        traffic.serve("e1", "x", "c", NOW - HOUR_MS + i, serve_id=sid)
    events = to_inputs(traffic, serde)
    split = len(events) // 3
    specs = {"e1": spec}

    clean, clean_store = make(serde, specs)
    clean.process(events[:split])
    clean.process(events[split:])
    want = statistics(clean_store, specs)

    first, base = make(serde, specs)
    first.process(events[:split])
    base_snapshot = dict(base)
    probe, probe_store = make(serde, specs, RecordingStore(base_snapshot))
    for i in range(split, len(events), 5):  # several batches, none of them committed
        probe.process(events[i:i + 5])
    writes = probe_store.writes
    assert len(writes) > 15
    for landed in range(len(writes) + 1):
        store = RecordingStore(base_snapshot)
        for key, value in writes[:landed]:
            store[key] = value
        replay, _ = make(serde, specs, store)
        mid = split + (len(events) - split) // 2  # the replay is batched differently
        replay.process(events[split:mid])
        replay.process(events[mid:])
        assert statistics(store, specs) == want, f"crash after {landed} of {len(writes)} writes"
        assert all(r.has_serve and not r.pending for recs in replay.records.values() for r in recs.values())
        assert {k: v.total for k, v in replay.records[b"e1\x1fx"].items()} == \
            {k: v.total for k, v in clean.records[b"e1\x1fx"].items()}
        restarted, _ = make(serde, specs, RecordingStore(store))  # records come back from the deltas
        assert snapshot(restarted) == snapshot(replay)


def test_table_keys_route_to_the_partition_of_their_events() -> None:
    from aiokafka.partitioner import murmur2

    routing = b"exp-1\x1fsite-9"
    expected = (murmur2(routing) & 0x7FFFFFFF) % 6
    assert partition_of(delta_key(routing, 12345), 6) == expected


def test_compaction_expires_old_records_and_folds_the_deltas(serde, spec) -> None:
    traffic = Traffic()
    old = traffic.serve("e1", "x", "a", NOW - 3 * DAY_MS)
    traffic.reward("e1", "x", "never-served", 1.0, NOW - 3 * DAY_MS)
    events = to_inputs(traffic, serde)
    recent = Traffic()
    for i in range(40):
        recent.serve("e1", "x", "b", NOW - HOUR_MS + i)
    later = to_inputs(recent, serde, {"serves": 1, "rewards": 1})
    processor, store = make(serde, {"e1": spec})
    processor.process(events)
    for event in later:  # 40 batches: 41 deltas
        processor.process([event])
    routing = b"e1\x1fx"
    assert len(processor.deltas[routing]) == 41
    dropped = processor.compact(routing, keep_serves_ms=2 * DAY_MS)
    assert dropped == (1, 1)  # the 3-day-old serve, and the reward that never found its serve
    assert old not in processor.records[routing] and len(processor.records[routing]) == 40
    assert len(processor.deltas[routing]) == 1 and sum(b"\x1eD" in k for k in store) == 1
    restarted, _ = make(serde, {"e1": spec}, RecordingStore(store))
    assert snapshot(restarted) == snapshot(processor)
    assert processor.compact(routing, keep_serves_ms=2 * DAY_MS) == (0, 0)


def test_weights_move_toward_the_best_arm_and_report_their_statistics(serde, spec) -> None:
    traffic = Traffic()
    traffic.bandit("e1", ["x"], {"a": 0.05, "b": 0.1, "c": 0.3}, 900, NOW - DAY_MS, np.random.default_rng(2))
    processor, store = make(serde, {"e1": spec})
    processor.process(to_inputs(traffic, serde))
    state = processor.states[b"e1\x1fx"]
    publication = next_weight_table(state, spec, b"e1\x1fx", NOW)
    assert max(publication.weights, key=publication.weights.get) == "c"
    assert publication.record["version"] == 1 and publication.record["entity"] == "x"
    published = {s["arm"]: (s["serves"], s["count"], s["sum"], s["sum_squares"]) for s in publication.record["statistics"]}
    assert published == expected_statistics(traffic, {"e1": spec})[("e1", "x")]
    assert sum(a["buckets"] for a in publication.record["arms"]) == spec.num_buckets


def test_a_removed_arm_loses_its_buckets(serde, spec) -> None:
    traffic = Traffic()
    traffic.bandit("e1", ["x"], {"a": 0.1, "b": 0.1, "c": 0.1}, 90, NOW - DAY_MS, np.random.default_rng(4))
    processor, store = make(serde, {"e1": spec})
    processor.process(to_inputs(traffic, serde))
    state = processor.states[b"e1\x1fx"]
    fewer = bandit_spec("e1", ["a", "c", "d"])  # b removed, d added
    publication = next_weight_table(state, fewer, b"e1\x1fx", NOW)
    assert publication.weights["b"] == 0 and publication.weights["d"] > 0
    assert set(publication.weights) == {"a", "b", "c", "d"}


def test_a_decision_is_made_from_the_window_and_names_its_rule(serde) -> None:
    from streams.publisher import decision_record

    spec = bandit_spec("e1", ["a", "b", "c"], criteria={"sequential": False})
    traffic = Traffic()
    traffic.bandit("e1", ["x"], {"a": 0.05, "b": 0.05, "c": 0.3}, 6000, NOW - 9 * DAY_MS, np.random.default_rng(8),
                   spacing_ms=125_000)
    processor, _ = make(serde, {"e1": spec})
    processor.process(to_inputs(traffic, serde))
    state = processor.states[b"e1\x1fx"]
    record = decision_record(state, spec, b"e1\x1fx", NOW)
    assert record["verdict"] == "SHIP" and record["winner"] == "c", record["reason"]
    assert {a["arm"] for a in record["arm_actions"]} == {"a", "b", "c"}
    young = Traffic()
    young.bandit("e1", ["y"], {"a": 0.05, "b": 0.05, "c": 0.3}, 50, NOW - HOUR_MS, np.random.default_rng(9))
    processor.process(to_inputs(young, serde, {"serves": 10_000, "rewards": 10_000}))
    early = decision_record(processor.states[b"e1\x1fy"], spec, b"e1\x1fy", NOW)
    assert early["verdict"] == "CONTINUE" and early["rule"] == "minimum_data"
