"""What the SDK logs for an assignment, without a broker: the delivery is replaced by one
that keeps what it is given and encodes it as `DurableDelivery`'s thread does.

The ServeEvent must say exactly what `assign` returned (the same bytes fastavro would
write for that record), with the context as it was at the call, even though it is
encoded later on another thread."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from sluice.avro import SingleObjectSerde
from sluice.client.sdk import AssignmentRequestError, Served, SluiceClient
from sluice.core.allocation import Allocation
from sluice.core.serve_token import format_serve_id
from sluice.core.spec import ExperimentSpec, spec_from_mapping
from sluice.kafka.clients import entity_key


class KeepingDelivery:
    """`DurableDelivery`'s caller side: keeps each logged record; `messages()` encodes them
    as its delivery thread does."""

    def __init__(self) -> None:
        self.logged: list[tuple[str, bytes | None, Any]] = []
        self.encoders: dict[str, Any] = {}

    def encode_with(self, topic: str, encode: Any) -> None:
        self.encoders[topic] = encode

    def log(self, topic: str, key: bytes | None, value: Any) -> None:
        self.logged.append((topic, key, value))

    def messages(self) -> list[tuple[str, bytes | None, bytes]]:
        return [(topic, key, value if isinstance(value, bytes) else self.encoders[topic](value))
                for topic, key, value in self.logged]

    def close(self) -> None:
        pass


def spec(traffic_fraction: float = 1.0) -> ExperimentSpec:
    return spec_from_mapping({
        "id": "exp", "status": "running", "salt": "exp-salt", "unit": "user_id", "entity": "site",
        "parameters": [{"name": "model", "type": "string"}], "traffic_fraction": traffic_fraction,
        "arms": [{"name": a, "values": {"model": f"m-{a}"}} for a in "abc"], "default_arm": "a",
        "policy": {"name": "thompson"}, "reward": {"type": "binary", "name": "click"},
    })


def client_with(tmp_path: Path, spec: ExperimentSpec, counts: list[int] | None) -> tuple[SluiceClient, KeepingDelivery]:
    """A client restored from a snapshot holding `spec` and, with `counts`, a table for site-1."""
    tables = {}
    if counts is not None:
        allocation = Allocation.contiguous(counts, spec.num_buckets)
        tables[entity_key(spec.id, "site-1").decode()] = {
            "version": 3, "num_buckets": spec.num_buckets, "arms": allocation.to_arm_weights(spec.arm_names)}
    (tmp_path / "t.snapshot.json").write_bytes(orjson.dumps({"specs": {spec.id: spec.model_dump(mode="json")},
                                                             "tables": tables}))
    delivery = KeepingDelivery()
    return SluiceClient(prefix="t", state_dir=tmp_path, delivery=delivery), delivery


def logged_events(delivery: KeepingDelivery, serde: SingleObjectSerde) -> list[tuple[str, bytes | None, dict[str, Any]]]:
    return [(topic, key, serde.decode(value, "ServeEvent").record) for topic, key, value in delivery.messages()]


def event_of(served: Served, context: dict[str, str]) -> dict[str, Any]:
    return {"event_id": served.serve_id, "serve_id": served.serve_id, "experiment_id": served.experiment,
            "entity": served.entity, "unit_id": served.unit_id, "arm": served.arm, "in_experiment": served.in_experiment,
            "propensity": served.propensity, "weights_version": served.weights_version, "bucket": served.bucket,
            "timestamp": served.timestamp_ms, "context": context}


def test_each_assignment_logs_the_serve_event_of_what_it_returned(tmp_path, serde) -> None:
    client, delivery = client_with(tmp_path, spec(traffic_fraction=0.5), [2000, 3000, 5000])
    served = [client.assign("exp", f"user-{i}", "site-1", {"page": f"p{i % 3}", "ü": "😀"}) for i in range(200)]
    assert {s.in_experiment for s in served} == {True, False} and {s.arm for s in served} == {"a", "b", "c"}
    events = logged_events(delivery, serde)
    assert [(t, k) for t, k, _ in events] == [("t.serves.v1", entity_key("exp", "site-1"))] * 200
    for i, (s, (_, _, event), (_, _, value)) in enumerate(zip(served, events, delivery.messages())):
        expected = event_of(s, {"page": f"p{i % 3}", "ü": "😀"})
        assert event == expected
        assert value == serde.encode("ServeEvent", expected)  # fastavro's bytes
        # the check the stream worker makes before it trusts a serve
        assert s.serve_id == format_serve_id(s.serve_id[2:26], event["timestamp"], event["in_experiment"], event["arm"])


def test_the_context_logged_is_the_one_at_the_call(tmp_path, serde) -> None:
    client, delivery = client_with(tmp_path, spec(), [5000, 5000, 0])
    context = {"page": "home"}
    client.assign("exp", "user-1", "site-1", context)
    context["page"] = "changed after the call"
    context["extra"] = "added after the call"
    assert logged_events(delivery, serde)[0][2]["context"] == {"page": "home"}


@pytest.mark.parametrize(("context", "words"), [
    ({"page": 5}, "'page': 5"), ({7: "x"}, "7: 'x'"), ([("a", "b"), 3], "context must map strings to strings"),
])
def test_a_context_that_is_not_strings_is_refused_at_the_call_and_nothing_is_logged(tmp_path, context, words) -> None:
    client, delivery = client_with(tmp_path, spec(), [5000, 5000, 0])
    with pytest.raises(AssignmentRequestError, match="context must map strings to strings") as info:
        client.assign("exp", "user-1", "site-1", context)  # type: ignore[arg-type]
    assert words in str(info.value)
    assert delivery.logged == []


def test_an_entity_that_is_not_a_string_is_refused(tmp_path) -> None:
    client, delivery = client_with(tmp_path, spec(), [5000, 5000, 0])
    with pytest.raises(AssignmentRequestError, match="entity must be a string, but 5 is given"):
        client.assign("exp", "user-1", 5)  # type: ignore[arg-type]
    assert delivery.logged == []


def test_log_false_logs_nothing_until_log_exposure(tmp_path, serde) -> None:
    client, delivery = client_with(tmp_path, spec(), [5000, 5000, 0])
    served = client.assign("exp", "user-1", "site-1", log=False)
    assert delivery.logged == []
    client.log_exposure(served, {"seen": "yes"})
    assert [e for _, _, e in logged_events(delivery, serde)] == [event_of(served, {"seen": "yes"})]


def test_without_a_table_the_default_arm_is_served_and_logged_as_outside(tmp_path, serde) -> None:
    client, delivery = client_with(tmp_path, spec(), None)
    served = client.assign("exp", "user-1", "site-1")
    assert (served.arm, served.values, served.propensity, served.in_experiment, served.weights_version, served.source) == (
        "a", {"model": "m-a"}, 1.0, False, 0, "default")
    assert logged_events(delivery, serde)[0][2] == event_of(served, {})


def test_from_a_snapshot_table_the_propensity_is_the_arm_share(tmp_path) -> None:
    client, _ = client_with(tmp_path, spec(), [2000, 3000, 5000])
    shares = {"a": 0.2, "b": 0.3, "c": 0.5}
    for s in (client.assign("exp", f"user-{i}", "site-1") for i in range(100)):
        assert (s.propensity, s.values, s.weights_version, s.source, s.in_experiment) == (
            shares[s.arm], {"model": f"m-{s.arm}"}, 3, "snapshot", True)


def test_served_is_an_immutable_record_with_its_json(tmp_path) -> None:
    client, _ = client_with(tmp_path, spec(), [5000, 5000, 0])
    served = client.assign("exp", "user-1", "site-1")
    with pytest.raises(AttributeError):
        served.arm = "c"  # type: ignore[misc]
    body = served.to_json()
    assert list(body) == ["experiment", "entity", "unit_id", "arm", "values", "propensity", "in_experiment",
                          "weights_version", "bucket", "serve_id", "timestamp_ms", "source"]
    assert body == {name: getattr(served, name) for name in body}
    assert orjson.loads(orjson.dumps(body)) == body
