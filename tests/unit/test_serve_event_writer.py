"""The hand-written ServeEvent encoder writes exactly the bytes fastavro writes, refuses what
does not fit naming the field, and refuses a schema layout it does not know."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.avro import EncodeError, SchemaLoadError, SchemaSet, SingleObjectSerde
from sluice.avro.serve_event import FIELDS, ServeEventWriter

LONG = st.integers(-(2**63), 2**63 - 1)
TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=150)  # any Unicode but lone surrogates


@pytest.fixture(scope="module")
def writer(schemas: SchemaSet) -> ServeEventWriter:
    return ServeEventWriter(schemas.latest("ServeEvent"))


@pytest.fixture(scope="module")
def fastavro_serde(schemas: SchemaSet) -> SingleObjectSerde:
    return SingleObjectSerde(schemas)  # validating: the record must fit before fastavro writes it


def record(**fields: object) -> dict[str, object]:
    base: dict[str, object] = {
        "event_id": "1.5f0c2a9e8b7d6c5a00000001.18bcfe56800.1.b", "serve_id": "1.5f0c2a9e8b7d6c5a00000001.18bcfe56800.1.b",
        "experiment_id": "ranking", "entity": "adv-1001", "unit_id": "user-42", "arm": "b", "in_experiment": True,
        "propensity": 0.25, "weights_version": 7, "bucket": 2500, "timestamp": 1_700_000_000_000, "context": {},
    }
    return base | fields


serve_events = st.fixed_dictionaries({
    "event_id": TEXT, "serve_id": TEXT, "experiment_id": TEXT, "entity": TEXT, "unit_id": TEXT, "arm": TEXT,
    "in_experiment": st.booleans(), "propensity": st.floats(allow_nan=True, allow_infinity=True),
    "weights_version": LONG, "bucket": st.integers(-(2**31), 2**31 - 1), "timestamp": LONG,
    "context": st.dictionaries(TEXT, TEXT, max_size=8),
})


@settings(max_examples=2_000, deadline=None)
@given(serve_events)
def test_every_generated_serve_event_is_byte_for_byte_fastavros(writer, fastavro_serde, event) -> None:
    assert writer.encode_record(event) == fastavro_serde.encode("ServeEvent", event)


@settings(max_examples=300, deadline=None)
@given(serve_events, st.data())
def test_the_serve_id_written_twice_and_repeated_timestamps_change_nothing(writer, fastavro_serde, event, data) -> None:
    # The SDK writes the serve id as the event id too, and many serves share a millisecond.
    event = event | {"event_id": event["serve_id"]}
    again = event | {"unit_id": data.draw(TEXT)}
    for e in (event, again, event):
        assert writer.encode_record(e) == fastavro_serde.encode("ServeEvent", e)


@pytest.mark.parametrize("fields", [
    # a one-byte length prefix, or not
    {"unit_id": "x" * 63}, {"unit_id": "x" * 64}, {"unit_id": "é" * 32}, {"arm": "a" * 200},
    {"entity": ""}, {"unit_id": "用户-😀"},
    {"timestamp": 0}, {"timestamp": -1}, {"timestamp": 2**63 - 1}, {"timestamp": -(2**63)},
    {"weights_version": 63}, {"weights_version": 64}, {"bucket": 2**31 - 1}, {"bucket": -(2**31)},
    {"propensity": 1}, {"propensity": 5e-324}, {"propensity": -0.0}, {"in_experiment": False},
    {"context": {"page": "home", "device": "mobile", "ü": "ß"}}, {"context": {f"k{i}": "v" for i in range(100)}},
])
def test_edges_of_every_field_type(writer, fastavro_serde, fields) -> None:
    assert writer.encode_record(record(**fields)) == fastavro_serde.encode("ServeEvent", record(**fields))


def test_no_context_is_the_empty_map_and_reads_back(writer, fastavro_serde) -> None:
    expected = fastavro_serde.encode("ServeEvent", record())
    without = {k: v for k, v in record().items() if k != "context"}
    assert writer.encode_record(without) == writer.encode(*(record()[f] for f in FIELDS[:-1]), None) == expected
    assert fastavro_serde.decode(expected, "ServeEvent").record == record()


def test_nan_propensity_is_written_as_fastavro_writes_it(writer, fastavro_serde) -> None:
    data = writer.encode_record(record(propensity=math.nan))
    assert data == fastavro_serde.encode("ServeEvent", record(propensity=math.nan))


@pytest.mark.parametrize(("fields", "named"), [
    ({"bucket": 2**31}, "'bucket'"),
    ({"timestamp": 2**63}, "'timestamp'"),
    ({"weights_version": -(2**63) - 1}, "'weights_version'"),
    ({"timestamp": 1.5}, "'timestamp'"),
    ({"unit_id": 42}, "'unit_id'"),
    ({"unit_id": "bad\ud800"}, "'unit_id'"),
    ({"arm": None}, "'arm'"),
    ({"in_experiment": "yes"}, "'in_experiment'"),
    ({"propensity": "high"}, "'propensity'"),
    ({"context": {"page": 5}}, "'context'"),
    ({"context": {1: "x"}}, "'context'"),
    ({"context": {"k": "bad\udfff"}}, "'context'"),
    ({"context": ["not", "a", "map"]}, "'context'"),
])
def test_a_value_that_does_not_fit_is_refused_naming_its_field(writer, fields, named) -> None:
    with pytest.raises(EncodeError, match=f"ServeEvent field {named} cannot be written"):
        writer.encode_record(record(**fields))


def test_a_missing_field_is_named(writer) -> None:
    with pytest.raises(EncodeError, match="missing field.*bucket"):
        writer.encode_record({k: v for k, v in record().items() if k != "bucket"})


def test_every_kept_serve_event_version_has_the_layout_written(schemas: SchemaSet) -> None:
    for version in schemas.versions("ServeEvent"):
        assert ServeEventWriter(version).version == version


def test_another_layout_is_refused(schemas: SchemaSet) -> None:
    with pytest.raises(SchemaLoadError, match="RewardEvent .* teach it the new layout"):
        ServeEventWriter(schemas.latest("RewardEvent"))
