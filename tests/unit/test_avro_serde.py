"""Avro single-object encoding: the wire format of every Sluice topic."""

from __future__ import annotations

import io
import json
from pathlib import Path

import fastavro
import pytest
from fastavro.schema import fingerprint as fastavro_fingerprint
from fastavro.schema import to_parsing_canonical_form

from sluice.avro import (
    BUNDLED_SCHEMAS,
    CorruptBodyError,
    EncodeError,
    NotSingleObjectError,
    SchemaLoadError,
    SchemaSet,
    SingleObjectSerde,
    TruncatedMessageError,
    UnexpectedSchemaError,
    UnknownFingerprintError,
)

SERVE = {
    "event_id": "0b0c8f7e-1111-4f7e-9d7e-000000000001", "serve_id": "0b0c8f7e-1111-4f7e-9d7e-000000000001",
    "experiment_id": "ranking", "entity": "advertiser-7", "unit_id": "user-42", "arm": "model-b",
    "in_experiment": True, "propensity": 0.3125, "weights_version": 12, "bucket": 4242,
    "timestamp": 1_763_900_000_123, "context": {"page": "home", "device": "ios"},
}


def test_message_is_marker_then_fingerprint_of_canonical_form_then_binary_body(serde: SingleObjectSerde, schemas: SchemaSet) -> None:
    data = serde.encode("ServeEvent", SERVE)
    assert data[:2] == b"\xc3\x01"
    # Fingerprint computed by fastavro from the schema file, independently of our loader.
    raw = json.loads((BUNDLED_SCHEMAS / "v1" / "ServeEvent.avsc").read_text())
    expected_fp = bytes.fromhex(fastavro_fingerprint(to_parsing_canonical_form(raw), "CRC-64-AVRO"))
    assert data[2:10] == expected_fp
    body = io.BytesIO()
    fastavro.schemaless_writer(body, fastavro.parse_schema(raw), SERVE)
    assert data[10:] == body.getvalue()


def test_round_trip_keeps_every_field(serde: SingleObjectSerde) -> None:
    decoded = serde.decode(serde.encode("ServeEvent", SERVE), expected="ServeEvent")
    assert decoded.schema == "io.sluice.ServeEvent"
    assert decoded.record == SERVE


def test_garbage_is_not_single_object_encoded(serde: SingleObjectSerde) -> None:
    with pytest.raises(NotSingleObjectError, match="expected marker C3 01, got 7B 22"):
        serde.decode(b'{"json": "instead of avro"}')


def test_empty_and_header_only_messages_are_named(serde: SingleObjectSerde) -> None:
    with pytest.raises(NotSingleObjectError, match="no bytes"):
        serde.decode(b"")
    with pytest.raises(NotSingleObjectError, match="shorter than the 10-byte"):
        serde.decode(b"\xc3\x01\x00\x01")


def test_unknown_fingerprint_names_the_fingerprint(serde: SingleObjectSerde) -> None:
    data = b"\xc3\x01" + bytes.fromhex("0102030405060708") + b"\x00"
    with pytest.raises(UnknownFingerprintError, match="0102030405060708"):
        serde.decode(data)


def test_truncated_body_is_reported_as_truncated(serde: SingleObjectSerde) -> None:
    data = serde.encode("ServeEvent", SERVE)
    with pytest.raises(TruncatedMessageError, match="ServeEvent body of 20 bytes ended"):
        serde.decode(data[:30])


def test_trailing_bytes_are_corrupt(serde: SingleObjectSerde) -> None:
    with pytest.raises(CorruptBodyError, match="2 trailing bytes"):
        serde.decode(serde.encode("ServeEvent", SERVE) + b"\x00\x00")


def test_wrong_record_type_is_rejected_when_a_type_is_expected(serde: SingleObjectSerde) -> None:
    with pytest.raises(UnexpectedSchemaError, match="expected a RewardEvent message, got a ServeEvent"):
        serde.decode(serde.encode("ServeEvent", SERVE), expected="RewardEvent")


def test_encode_names_the_field_that_does_not_fit(serde: SingleObjectSerde) -> None:
    bad = dict(SERVE, propensity="high")
    with pytest.raises(EncodeError, match="propensity"):
        serde.encode("ServeEvent", bad)
    missing = {k: v for k, v in SERVE.items() if k != "unit_id"}
    with pytest.raises(EncodeError, match="unit_id"):
        serde.encode("ServeEvent", missing)


def test_a_named_type_of_another_file_is_inlined_at_its_first_occurrence_only(tmp_path: Path) -> None:
    v1 = tmp_path / "v1"
    v1.mkdir()
    (v1 / "Point.avsc").write_text(json.dumps(
        {"type": "record", "name": "Point", "namespace": "t", "doc": "d", "fields": [{"name": "x", "type": "int"}]}))
    (v1 / "Line.avsc").write_text(json.dumps({"type": "record", "name": "Line", "namespace": "t", "fields": [
        {"name": "a", "type": "t.Point"}, {"name": "b", "type": "Point"}, {"name": "rest", "type": {"type": "array", "items": "t.Point"}}]}))
    line = SchemaSet.load(tmp_path).latest("Line")
    assert line.canonical_form == (
        '{"name":"t.Line","type":"record","fields":['
        '{"name":"a","type":{"name":"t.Point","type":"record","fields":[{"name":"x","type":"int"}]}},'
        '{"name":"b","type":"t.Point"},'
        '{"name":"rest","type":{"type":"array","items":"t.Point"}}]}'
    )
    assert line.header_fingerprint == bytes.fromhex(fastavro_fingerprint(line.canonical_form, "CRC-64-AVRO"))


def test_a_reference_to_an_undefined_type_names_the_file_and_the_type(tmp_path: Path) -> None:
    v1 = tmp_path / "v1"
    v1.mkdir()
    (v1 / "Line.avsc").write_text(json.dumps({"type": "record", "name": "Line", "fields": [{"name": "a", "type": "Nowhere"}]}))
    with pytest.raises(SchemaLoadError, match=r"Line.avsc: names type 'Nowhere'"):
        SchemaSet.load(tmp_path)


def test_every_kept_version_of_a_record_is_readable_by_fingerprint(serde: SingleObjectSerde, schemas: SchemaSet) -> None:
    reward = {"event_id": "e", "serve_id": "s", "experiment_id": "x", "entity": "a", "name": "click", "value": 1.0, "timestamp": 5}
    versions = schemas.versions("RewardEvent")
    assert [v.version for v in versions] == [1, 2]
    old = serde.encode("RewardEvent", reward, version=versions[0])
    decoded = serde.decode(old)
    assert decoded.writer_version == 1
    assert decoded.record == dict(reward, latency_ms=None, error=None)
