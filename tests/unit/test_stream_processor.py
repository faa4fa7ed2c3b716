"""The stream worker's batch logic without Kafka: attribution rules, windows, dead letters,
the state it stores (a real local RocksDB store, as the worker commits it), bounded writes,
expiry, and what a restart finds."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

from sluice.core.serve_token import format_serve_id
from sluice.core.spec import ExperimentSpec
from sluice.kafka.clients import entity_key
from sluice.kafka.partitions import partition_for_key
from streams.processor import BatchResult, InputEvent, Processor
from streams.publisher import next_weight_table, window_totals
from streams.state import REWARDED, SERVE_ID, SERVES_CHUNK, EntityState, entity_prefix
from streams.store import LocalStore

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from stream_support import DAY_MS, HOUR_MS, Traffic, bandit_spec, expected_statistics  # noqa: E402

NOW = 1_790_000_000_000
PARTITIONS = 4


def to_inputs(traffic: Traffic, serde, first_offset: int = 0) -> list[InputEvent]:
    """The traffic as consumed messages, each in its key's partition."""
    out = []
    schema = {"serves": "ServeEvent", "rewards": "RewardEvent"}
    for offset, (kind, key, record) in enumerate(traffic.events, start=first_offset):
        out.append(InputEvent(kind, f"t.{kind}", partition_for_key(key, PARTITIONS), offset, key,
                              serde.encode(schema[kind], record), NOW))
    return out


class Worker:
    """A processor whose every batch is committed to a local store, as the worker does
    after its transaction; `restart()` is a new process on the same store."""

    def __init__(self, serde, specs: dict[str, ExperimentSpec], path: Path, **options: int) -> None:
        self.serde, self.specs, self.path, self.options = serde, specs, path, options
        self.store = LocalStore(path)
        self.processor = self._processor()

    def _processor(self) -> Processor:
        p = Processor(self.serde, self.specs.get, self.store, now_ms=lambda: NOW,
                      partition_of=lambda key: partition_for_key(key, PARTITIONS), **self.options)
        p.states.update(self.store.entities(lambda routing: True))
        return p

    def process(self, events: list[InputEvent], *, commit: bool = True) -> BatchResult:
        result = self.processor.process(events)
        if commit:
            self.store.apply(result.writes.items(), {})
        return result

    def restart(self) -> Worker:
        """A new process on the same store: memory holds only what the store gives back."""
        self.store.close()
        self.store = LocalStore(self.path)
        self.processor = self._processor()
        return self

    def statistics(self) -> dict:
        """The windowed statistics the store holds (what a restarted worker finds), in the
        shape of `expected_statistics`."""
        out = {}
        for routing, state in self.store.entities(lambda routing: True).items():
            exp, entity = routing.decode().split("\x1f")
            totals = window_totals(state, self.specs[exp].window_ms)
            out[(exp, entity)] = {a: (int(t[0]), int(t[1]), float(t[2]), float(t[3]))
                                  for a, t in zip(state.arms, totals) if t[0]}
        return out


@pytest.fixture
def spec() -> ExperimentSpec:
    return bandit_spec("e1", ["a", "b", "c"])


@pytest.fixture
def make(serde, tmp_path):
    stores: list[Worker] = []

    def factory(specs: dict[str, ExperimentSpec], **options: int) -> Worker:
        w = Worker(serde, specs, tmp_path / f"store-{len(stores)}", **options)
        stores.append(w)
        return w

    yield factory
    for w in stores:
        w.store.close()


def test_statistics_equal_the_recomputation(serde, spec, make) -> None:
    traffic = Traffic()
    traffic.bandit("e1", ["x", "y"], {"a": 0.1, "b": 0.3, "c": 0.5}, 400, NOW - DAY_MS, np.random.default_rng(3))
    worker = make({"e1": spec})
    events = to_inputs(traffic, serde)
    for i in range(0, len(events), 97):  # batches of arbitrary size
        worker.process(events[i:i + 97])
    assert worker.statistics() == expected_statistics(traffic, {"e1": spec})


def test_binary_reward_counts_once_and_continuous_sums(serde, make) -> None:
    binary = bandit_spec("bin", ["a", "b"])
    cont = bandit_spec("cont", ["a", "b"], reward_type="continuous")
    traffic = Traffic()
    s1 = traffic.serve("bin", "x", "a", NOW - HOUR_MS)
    traffic.reward("bin", "x", s1, 1.0, NOW - HOUR_MS + 10)
    traffic.reward("bin", "x", s1, 1.0, NOW - HOUR_MS + 20)  # second click of one serve: not counted
    s2 = traffic.serve("cont", "x", "b", NOW - HOUR_MS)
    traffic.reward("cont", "x", s2, 2.5, NOW - HOUR_MS + 10)
    worker = make({"bin": binary, "cont": cont})
    first = worker.process(to_inputs(traffic, serde))
    more = Traffic()
    more.reward("cont", "x", s2, 1.5, NOW - HOUR_MS + 20)  # a later batch: the serve's total comes from the store
    more.reward("bin", "x", s1, 1.0, NOW - HOUR_MS + 30)
    second = worker.process(to_inputs(more, serde, 100))
    stats = worker.statistics()
    assert stats[("bin", "x")] == {"a": (1, 1, 1.0, 1.0)}
    assert stats[("cont", "x")] == {"b": (1, 1, 4.0, 16.0)}  # one serve with reward 4: sum_sq 4²
    assert first.outcomes["duplicate"] == 1 and first.outcomes["attributed"] == 2
    assert second.outcomes == {"attributed": 1, "duplicate": 1}


def test_reward_after_window_and_other_rewards_change_nothing(serde, spec, make) -> None:
    traffic = Traffic()
    sid = traffic.serve("e1", "x", "a", NOW - 2 * DAY_MS)
    traffic.reward("e1", "x", sid, 1.0, NOW - 2 * DAY_MS + 25 * HOUR_MS)  # window is 24 h
    traffic.reward("e1", "x", sid, 1.0, NOW - 2 * DAY_MS + HOUR_MS, name="conversion")
    worker = make({"e1": spec})
    result = worker.process(to_inputs(traffic, serde))
    assert worker.statistics() == {("e1", "x"): {"a": (1, 1, 0.0, 0.0)}}
    assert result.outcomes == {"after_window": 1, "other_reward": 1}


def test_a_reward_before_its_serve_counts_from_its_serve_id(serde, spec, make) -> None:
    sid = format_serve_id("ab" * 12, NOW - 20, True, "b")
    early, late = Traffic(), Traffic()
    early.reward("e1", "x", sid, 1.0, NOW - 10)
    late.serve("e1", "x", "b", NOW - 20, serve_id=sid)
    worker = make({"e1": spec})
    assert worker.process(to_inputs(early, serde)).outcomes == {"attributed": 1}
    assert worker.process(to_inputs(late, serde, 1)).outcomes == {}
    assert worker.statistics() == {("e1", "x"): {"b": (1, 1, 1.0, 1.0)}}


def test_serves_outside_the_experiment_are_served_but_not_observations(serde, spec, make) -> None:
    traffic = Traffic()
    sid = traffic.serve("e1", "x", "a", NOW - 10, in_experiment=False)
    traffic.reward("e1", "x", sid, 1.0, NOW)
    worker = make({"e1": spec})
    result = worker.process(to_inputs(traffic, serde))
    assert worker.statistics() == {("e1", "x"): {"a": (1, 0, 0.0, 0.0)}}
    assert result.outcomes == {"outside_experiment": 1}


def test_a_serve_logged_twice_counts_once_within_and_across_batches(serde, spec, make) -> None:
    traffic = Traffic()
    traffic.serve("e1", "x", "a", NOW - 10)
    traffic.events.append(traffic.events[0])
    worker = make({"e1": spec})
    events = to_inputs(traffic, serde)
    assert worker.process(events).outcomes == {"duplicate_serve": 1}
    assert worker.restart().process(events).outcomes == {"duplicate_serve": 2}
    assert worker.statistics() == {("e1", "x"): {"a": (1, 1, 0.0, 0.0)}}


def test_the_window_slides_in_event_time(serde, spec, make) -> None:
    old, new = Traffic(), Traffic()
    old.serve("e1", "x", "a", NOW - 8 * DAY_MS)
    old.serve("e1", "x", "b", NOW - 6 * DAY_MS)
    new.serve("e1", "x", "c", NOW)
    new.serve("e1", "x", "a", NOW - 8 * DAY_MS)  # late, and outside the window by now
    worker = make({"e1": spec})
    worker.process(to_inputs(old, serde))
    assert worker.statistics() == {("e1", "x"): {"a": (1, 1, 0.0, 0.0), "b": (1, 1, 0.0, 0.0)}}
    result = worker.process(to_inputs(new, serde, 2))
    assert result.outcomes == {"too_late": 1}
    assert worker.statistics() == {("e1", "x"): {"b": (1, 1, 0.0, 0.0), "c": (1, 1, 0.0, 0.0)}}
    state = worker.processor.states[b"e1\x1fx"]
    assert min(state.hours.hours) >= (NOW - 7 * DAY_MS) // HOUR_MS  # expired hours are gone, in memory
    assert min(worker.restart().processor.states[b"e1\x1fx"].hours.hours) >= (NOW - 7 * DAY_MS) // HOUR_MS  # and stored


@pytest.mark.parametrize("mutate, reason", [
    (lambda ev: b"not avro at all", "undecodable"),
    (lambda ev: b"\xc3\x01" + b"\x00" * 8 + ev.value[10:], "unknown_schema"),
    (lambda ev: ev.value[:-3], "undecodable"),
    (lambda ev: None, "undecodable"),
])
def test_undecodable_bytes_are_dead_letters(serde, spec, make, mutate, reason) -> None:
    traffic = Traffic()
    traffic.serve("e1", "x", "a", NOW)
    traffic.serve("e1", "x", "b", NOW)
    good, bad = to_inputs(traffic, serde)
    bad = InputEvent(bad.kind, bad.topic, bad.partition, bad.offset, bad.key, mutate(bad), bad.timestamp_ms)
    worker = make({"e1": spec})
    result = worker.process([good, bad])
    assert [(d.event.offset, d.reason) for d in result.dead_letters] == [(1, reason)]
    assert worker.statistics() == {("e1", "x"): {"a": (1, 1, 0.0, 0.0)}}


@pytest.mark.parametrize("change, reason", [
    ({"arm": "zzz"}, "unknown_arm"),
    ({"experiment_id": "nope"}, "unknown_experiment"),
    ({"propensity": 0.0}, "invalid_propensity"),
    ({"propensity": math.nan}, "invalid_propensity"),
    ({"timestamp": NOW + 2 * HOUR_MS}, "future_timestamp"),
    ({"entity": "y"}, "wrong_key"),
    ({"entity": "y\x1ez"}, "invalid_value"),
    ({"serve_id": ""}, "invalid_serve_id"),
    ({"serve_id": "3f2504e0-4f89-41d3-9a0c-0305e82c3301"}, "invalid_serve_id"),
    ({"arm": "c"}, "invalid_serve_id"),  # the token says b
    ({"timestamp": NOW - 6}, "invalid_serve_id"),  # the token says NOW - 5
    ({"in_experiment": False}, "invalid_serve_id"),
])
def test_invalid_serves_are_dead_letters_with_reasons(serde, spec, make, change, reason) -> None:
    traffic = Traffic()
    traffic.serve("e1", "x", "a", NOW - 5)
    traffic.serve("e1", "x", "b", NOW - 5)
    kind, key, record = traffic.events[1]
    record.update(change)
    if reason != "wrong_key":  # keep the key that of the (changed) experiment and entity
        traffic.events[1] = (kind, entity_key(record["experiment_id"], record["entity"]), record)
    worker = make({"e1": spec})
    result = worker.process(to_inputs(traffic, serde))
    assert [d.reason for d in result.dead_letters] == [reason]
    assert reason in result.dead_letters[0].header
    assert worker.statistics() == {("e1", "x"): {"a": (1, 1, 0.0, 0.0)}}


def test_an_event_in_another_partition_than_its_keys_is_a_dead_letter(serde, spec, make) -> None:
    traffic = Traffic()
    traffic.serve("e1", "x", "a", NOW - 5)
    (event,) = to_inputs(traffic, serde)
    moved = InputEvent(event.kind, event.topic, (event.partition + 1) % PARTITIONS, 0, event.key, event.value, NOW)
    result = make({"e1": spec}).process([moved])
    assert [d.reason for d in result.dead_letters] == ["wrong_partition"]
    assert "murmur2" in result.dead_letters[0].detail


@pytest.mark.parametrize("value, serve_id, reason", [
    (math.nan, None, "invalid_value"),
    (math.inf, None, "invalid_value"),
    (0.5, None, "invalid_value"),
    (1.0, "never-served", "invalid_serve_id"),
    (1.0, format_serve_id("0" * 24, NOW - 5, True, "zzz"), "unknown_arm"),
])
def test_invalid_rewards_are_dead_letters(serde, spec, make, value, serve_id, reason) -> None:
    traffic = Traffic()
    sid = traffic.serve("e1", "x", "a", NOW - 5)
    traffic.reward("e1", "x", serve_id or sid, value, NOW)
    result = make({"e1": spec}).process(to_inputs(traffic, serde))
    assert [d.reason for d in result.dead_letters] == [reason]


@pytest.mark.parametrize("reward_type", ["binary", "continuous"])
def test_a_restart_finds_what_was_committed_and_goes_on_exactly(serde, make, reward_type) -> None:
    """The worker commits each batch's writes with its input offsets; after a crash, the
    uncommitted batches are read again by a new process on the stored state, in other
    batch boundaries. The result equals a run without the crash."""
    spec = bandit_spec("e1", ["a", "b", "c"], reward_type=reward_type)
    specs = {"e1": spec}
    traffic = Traffic()
    traffic.bandit("e1", ["x", "y"], {"a": 0.3, "b": 0.5, "c": 0.7}, 60, NOW - HOUR_MS, np.random.default_rng(11))
    for i in range(10):  # rewards that arrive before their serves, some rewarded twice
        sid = format_serve_id(f"{i:024x}", NOW - HOUR_MS + i, True, "c")
        traffic.reward("e1", "x", sid, 1.0, NOW - HOUR_MS + i + 1)
        traffic.reward("e1", "x", sid, 1.0, NOW - HOUR_MS + i + 2)
        traffic.serve("e1", "x", "c", NOW - HOUR_MS + i, serve_id=sid)
    events = to_inputs(traffic, serde)
    split = len(events) // 3
    want = expected_statistics(traffic, specs)

    worker = make(specs)
    worker.process(events[:split])
    for i in range(split, len(events), 7):  # processed, never committed: the crash loses them
        worker.process(events[i:i + 7], commit=False)
    restarted = worker.restart()
    mid = split + (len(events) - split) // 2
    restarted.process(events[split:mid])
    restarted.process(events[mid:])
    assert restarted.statistics() == want


def test_a_busy_entity_writes_nothing_larger_than_the_limit(serde, spec, make) -> None:
    traffic = Traffic()
    for i in range(30_000):  # one batch, one entity, one hour
        traffic.serve("e1", "x", "abc"[i % 3], NOW - HOUR_MS + i)
    worker = make({"e1": spec}, max_message_bytes=64 * 1024)
    result = worker.process(to_inputs(traffic, serde))
    sizes = [len(k) + len(v or b"") for k, v in result.writes.items()]
    assert max(sizes) <= 64 * 1024 and sum(1 for k in result.writes if k[:1] == SERVES_CHUNK) >= 6
    assert worker.statistics() == {("e1", "x"): {a: (10_000, 10_000, 0.0, 0.0) for a in "abc"}}
    assert worker.store.count(entity_prefix(SERVE_ID, b"e1\x1fx")) == 30_000  # duplicates are found on disk


def test_old_serve_ids_and_rewarded_serves_expire(serde, spec, make) -> None:
    traffic = Traffic()
    old = traffic.serve("e1", "x", "a", NOW - 3 * DAY_MS)
    traffic.reward("e1", "x", old, 1.0, NOW - 3 * DAY_MS + 10)
    recent = traffic.serve("e1", "x", "b", NOW - HOUR_MS)
    traffic.reward("e1", "x", recent, 1.0, NOW - HOUR_MS + 10)
    worker = make({"e1": spec}, dedup_ms=DAY_MS)
    worker.process(to_inputs(traffic, serde))
    routing = b"e1\x1fx"
    deletes = worker.processor.expire(routing, spec)
    assert deletes and all(v is None for v in deletes.values())
    worker.store.apply(deletes.items(), {})
    assert worker.store.count(entity_prefix(SERVE_ID, routing)) == 1  # the recent serve id only
    assert worker.store.count(entity_prefix(REWARDED, routing)) == 1  # the recent rewarded serve only
    assert worker.processor.expire(routing, spec) == {}
    assert worker.statistics() == {("e1", "x"): {"a": (1, 1, 1.0, 1.0), "b": (1, 1, 1.0, 1.0)}}


def test_weights_move_toward_the_best_arm_and_report_their_statistics(serde, spec, make) -> None:
    traffic = Traffic()
    traffic.bandit("e1", ["x"], {"a": 0.05, "b": 0.1, "c": 0.3}, 900, NOW - DAY_MS, np.random.default_rng(2))
    worker = make({"e1": spec})
    worker.process(to_inputs(traffic, serde))
    state = worker.processor.states[b"e1\x1fx"]
    publication = next_weight_table(state, spec, b"e1\x1fx", NOW)
    assert max(publication.weights, key=publication.weights.get) == "c"
    assert publication.record["version"] == 1 and publication.record["entity"] == "x"
    published = {s["arm"]: (s["serves"], s["count"], s["sum"], s["sum_squares"]) for s in publication.record["statistics"]}
    assert published == expected_statistics(traffic, {"e1": spec})[("e1", "x")]
    assert sum(a["buckets"] for a in publication.record["arms"]) == spec.num_buckets


def test_a_removed_arm_loses_its_buckets(serde, spec, make) -> None:
    traffic = Traffic()
    traffic.bandit("e1", ["x"], {"a": 0.1, "b": 0.1, "c": 0.1}, 90, NOW - DAY_MS, np.random.default_rng(4))
    worker = make({"e1": spec})
    worker.process(to_inputs(traffic, serde))
    state = worker.processor.states[b"e1\x1fx"]
    fewer = bandit_spec("e1", ["a", "c", "d"])  # b removed, d added
    publication = next_weight_table(state, fewer, b"e1\x1fx", NOW)
    assert publication.weights["b"] == 0 and publication.weights["d"] > 0
    assert set(publication.weights) == {"a", "b", "c", "d"}


def nine_decisive_days(make, serde, spec: ExperimentSpec) -> tuple[Worker, EntityState]:
    """A worker that has read nine days of entity x where c clicks at 30 % and a, b at 5 %."""
    traffic = Traffic()
    traffic.bandit("e1", ["x"], {"a": 0.05, "b": 0.05, "c": 0.3}, 6000, NOW - 9 * DAY_MS, np.random.default_rng(8),
                   spacing_ms=125_000)
    worker = make({"e1": spec})
    worker.process(to_inputs(traffic, serde))
    return worker, worker.processor.states[b"e1\x1fx"]


def test_a_decision_is_made_from_the_window_and_names_its_rule(serde, make) -> None:
    from streams.publisher import decision_record

    spec = bandit_spec("e1", ["a", "b", "c"], criteria={"sequential": False})
    worker, state = nine_decisive_days(make, serde, spec)
    record = decision_record(state, spec, b"e1\x1fx", NOW)
    assert record["verdict"] == "SHIP" and record["winner"] == "c", record["reason"]
    assert {a["arm"] for a in record["arm_actions"]} == {"a", "b", "c"}
    young = Traffic()
    young.bandit("e1", ["y"], {"a": 0.05, "b": 0.05, "c": 0.3}, 50, NOW - HOUR_MS, np.random.default_rng(9))
    worker.process(to_inputs(young, serde, 100_000))
    early = decision_record(worker.processor.states[b"e1\x1fy"], spec, b"e1\x1fy", NOW)
    assert early["verdict"] == "CONTINUE" and early["rule"] == "minimum_data"


def test_rewards_read_before_their_serves_still_get_a_decision(serde, make) -> None:
    """Serves and rewards come on two topics, so a window can hold an arm's rewards before
    its serves. The decision caps successes at the serves, as the posterior does, instead
    of finding the window invalid and judging nothing."""
    from streams.publisher import COUNT, SUM, decision_record

    spec = bandit_spec("e1", ["a", "b"], criteria={"sequential": False})
    traffic = Traffic()
    for i in range(300):
        traffic.serve("e1", "x", "a" if i % 60 else "b", NOW - DAY_MS + i * 60_000)
    ahead = Traffic()  # clicks of b's serves that are still on their way
    for i in range(12):
        ahead.reward("e1", "x", format_serve_id(f"{i:024x}", NOW - HOUR_MS, True, "b"), 1.0, NOW - HOUR_MS + 10)
    worker = make({"e1": spec})
    worker.process(to_inputs(traffic, serde))
    worker.process(to_inputs(ahead, serde, 10_000))
    state = worker.processor.states[b"e1\x1fx"]
    totals = window_totals(state, spec.window_ms)
    b = state.arms.index("b")
    assert totals[b, SUM] == 12 and totals[b, COUNT] == 5
    record = decision_record(state, spec, b"e1\x1fx", NOW)
    assert record is not None and record["verdict"] in {"CONTINUE", "SHIP", "ITERATE", "KILL"}, record


def test_an_arm_added_to_the_spec_is_judged_before_any_table_includes_it(serde, make) -> None:
    """A spec change (a newly trained model entering) can reach the decision before the
    weight table that would add the arm to the entity's state: the arm joins with no data
    and the decision waits for it, instead of the worker failing on an unknown arm."""
    from streams.publisher import decision_record

    spec = bandit_spec("e1", ["a", "b"], criteria={"sequential": False})
    traffic = Traffic()
    traffic.bandit("e1", ["x"], {"a": 0.05, "b": 0.3}, 3000, NOW - 9 * DAY_MS, np.random.default_rng(8),
                   spacing_ms=250_000)
    worker = make({"e1": spec})
    worker.process(to_inputs(traffic, serde))
    state = worker.processor.states[b"e1\x1fx"]
    assert state.arms == ["a", "b"]
    record = decision_record(state, bandit_spec("e1", ["a", "b", "new"], criteria={"sequential": False}), b"e1\x1fx", NOW)
    assert state.arms == ["a", "b", "new"]
    assert record["verdict"] == "CONTINUE" and record["rule"] == "minimum_data", record["reason"]
    assert [s["count"] for s in record["statistics"] if s["arm"] == "new"] == [0]


def test_an_arm_offered_to_one_entity_lives_in_that_entity_s_table_only(serde, make) -> None:
    from streams.publisher import decision_record

    data = bandit_spec("e1", ["a", "b"]).model_dump(mode="json")
    data["arms"].append({"name": "c", "values": {"model": "m-c"}, "entities": ["x"]})
    spec = ExperimentSpec.model_validate(data)
    traffic = Traffic()
    for i in range(30):
        for entity in ("x", "y"):
            traffic.serve("e1", entity, "ab"[i % 2], NOW - HOUR_MS + i * 1000)
    traffic.serve("e1", "x", "c", NOW - 10)
    traffic.serve("e1", "y", "c", NOW - 10)  # y has no model c
    worker = make({"e1": spec})
    result = worker.process(to_inputs(traffic, serde))
    assert [(d.reason, d.event.key) for d in result.dead_letters] == [("unknown_arm", b"e1\x1fy")]
    assert "for entity 'y'" in result.dead_letters[0].detail
    tables = {e: next_weight_table(worker.processor.states[b"e1\x1f" + e.encode()], spec.for_entity(e),
                                   b"e1\x1f" + e.encode(), NOW) for e in ("x", "y")}
    assert set(tables["x"].weights) == {"a", "b", "c"} and tables["x"].weights["c"] > 0
    assert set(tables["y"].weights) == {"a", "b"}
    record = decision_record(worker.processor.states[b"e1\x1fy"], spec.for_entity("y"), b"e1\x1fy", NOW)
    assert record is not None and {a["arm"] for a in record["arm_actions"]} == {"a", "b"}


def test_a_new_arm_enters_at_its_entry_weight_until_it_has_enough_observations(serde, make) -> None:
    from streams.publisher import publication_round

    data = bandit_spec("e1", ["a", "b"]).model_dump(mode="json")
    data["arms"].append({"name": "new", "values": {"model": "m-new"}, "entry": {"weight": 0.1, "until_observations": 40}})
    spec = ExperimentSpec.model_validate(data)
    traffic = Traffic()
    for i in range(100):
        sid = traffic.serve("e1", "x", "ab"[i % 2], NOW - HOUR_MS + i * 1000)
        if i % 2 == 0:
            traffic.reward("e1", "x", sid, 1.0, NOW - HOUR_MS + i * 1000 + 10)  # a is far better
    worker = make({"e1": spec})
    worker.process(to_inputs(traffic, serde))
    state = worker.processor.states[b"e1\x1fx"]
    entering = publication_round(state, spec, b"e1\x1fx", NOW).publication
    assert entering.weights["new"] == pytest.approx(0.1) and entering.weights["a"] > entering.weights["b"]
    assert "new enters at 0.1 until 40 observations (0 so far)" in entering.record["reason"]
    judged = Traffic()
    for i in range(40):
        judged.serve("e1", "x", "new", NOW - 30 * 60_000 + i * 1000)  # never rewarded
    worker.process(to_inputs(judged, serde, 10_000))
    after = publication_round(state, spec, b"e1\x1fx", NOW).publication
    assert after.weights["new"] < 0.1 and "enters" not in after.record["reason"]


def test_a_model_entering_after_a_ship_gets_its_entry_weight_and_a_fresh_verdict(serde, make) -> None:
    """A ship holds every other arm of its time at the holdback or 0; an arm added later (a
    retrained model) would stay at 0, get no data and never a verdict. It reopens the entity
    to the policy instead, entering at its entry weight."""
    from streams.publisher import decision_record, publication_round

    spec = bandit_spec("e1", ["a", "b", "c"], criteria={"sequential": False}, decisions="act")
    worker, state = nine_decisive_days(make, serde, spec)
    shipped = publication_round(state, spec, b"e1\x1fx", NOW, decision=decision_record(state, spec, b"e1\x1fx", NOW))
    assert shipped.decision["verdict"] == "SHIP" and shipped.publication.weights["c"] == pytest.approx(0.95, abs=0.01)
    data = spec.model_dump(mode="json")
    data["arms"].append({"name": "c2", "values": {"model": "m-c2"}, "entry": {"weight": 0.1, "until_observations": 300}})
    newer = ExperimentSpec.model_validate({**data, "spec_version": 2})
    entering = publication_round(state, newer, b"e1\x1fx", NOW).publication
    assert entering.weights["c2"] == pytest.approx(0.1, abs=0.01), entering.weights
    assert state.shipped is None and "c2 entered after c was shipped" in entering.record["reason"]
    # No verdict until the newcomer has its entry's observations: a ship now would starve it.
    assert decision_record(state, newer, b"e1\x1fx", NOW) is None
    worker.specs["e1"] = newer
    late = Traffic()
    late.bandit("e1", ["x"], {"c2": 0.3}, 300, NOW - 3 * DAY_MS, np.random.default_rng(3), spacing_ms=60_000)
    worker.process(to_inputs(late, serde, 50_000))
    state = worker.processor.states[b"e1\x1fx"]
    assert decision_record(state, newer, b"e1\x1fx", NOW) is not None
    still = publication_round(state, spec, b"e1\x1fx", NOW)  # the same arms again: nothing more to reopen
    assert still.publication.weights["c"] > 0.5


def test_an_entity_outside_the_specs_list_is_a_dead_letter(serde, make) -> None:
    spec = bandit_spec("e1", ["a", "b"], entities=["x"])
    traffic = Traffic()
    traffic.serve("e1", "x", "a", NOW - 5)
    traffic.serve("e1", "y", "a", NOW - 5)
    worker = make({"e1": spec})
    result = worker.process(to_inputs(traffic, serde))
    assert [(d.reason, d.event.key) for d in result.dead_letters] == [("unknown_entity", b"e1\x1fy")]
    assert worker.statistics() == {("e1", "x"): {"a": (1, 1, 0.0, 0.0)}}
