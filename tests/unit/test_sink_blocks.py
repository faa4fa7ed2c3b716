"""The Avro container files the sink hands ClickHouse: any Avro reader sees in them the records
of the single-object messages they were made of, each followed by the header it must end with."""

from __future__ import annotations

import dataclasses
import io
from datetime import datetime, timezone

import fastavro

from sluice.avro import SchemaSet, SingleObjectSerde
from streams.sink.avro_blocks import plan_blocks
from streams.sink.rows import ROUTES

# The rewards table's columns as the migrations make them.
REWARD_TYPES = {"event_id": "String", "serve_id": "String", "experiment_id": "LowCardinality(String)",
                "entity": "LowCardinality(String)", "name": "LowCardinality(String)", "value": "Float64",
                "latency_ms": "Nullable(Float64)", "error": "Nullable(Bool)", "timestamp": "DateTime64(3, 'UTC')",
                "_topic": "LowCardinality(String)", "_partition": "UInt32", "_offset": "UInt64", "inserted_at": "DateTime64(3, 'UTC')"}


def rewards(n: int) -> list[dict]:
    return [{"event_id": f"r{i}", "serve_id": f"s{i}", "experiment_id": "exp", "entity": "é", "name": "click",
             "value": float(i % 2), "timestamp": 1_700_000_000_000 + i, "latency_ms": None if i % 2 else 2.5 * i,
             "error": [None, True, False][i % 3]} for i in range(n)]


def test_a_container_file_holds_the_messages_records_each_followed_by_its_header(schemas: SchemaSet) -> None:
    serde = SingleObjectSerde(schemas)
    writer = schemas.latest("RewardEvent")
    plan = plan_blocks(writer, writer, ROUTES["rewards"].columns, REWARD_TYPES)
    assert plan is not None
    records = rewards(300)  # enough for multi-byte counts and sizes
    read = list(fastavro.reader(io.BytesIO(plan.container([serde.encode("RewardEvent", r) for r in records]))))
    header = b"\xc3\x01" + writer.header_fingerprint
    as_read = [r | {"timestamp": datetime.fromtimestamp(r["timestamp"] / 1000, timezone.utc), "sluice_next_header": header}
               for r in records]
    assert read == as_read


def test_an_older_writer_fills_the_columns_it_has_and_leaves_the_null_defaults_to_the_table(schemas: SchemaSet) -> None:
    v1, v2 = schemas.versions("RewardEvent")
    plan = plan_blocks(v1, v2, ROUTES["rewards"].columns, REWARD_TYPES)
    assert plan is not None
    assert plan.columns == ("event_id", "serve_id", "experiment_id", "entity", "name", "value", "timestamp")


def test_a_column_the_writer_lacks_without_a_null_default_keeps_its_messages_in_python(schemas: SchemaSet) -> None:
    v1, v2 = schemas.versions("RewardEvent")
    newest = v2.self_contained | {"fields": [f | {"default": 0.0} if f["name"] == "latency_ms" else f
                                             for f in v2.self_contained["fields"]]}
    reader = dataclasses.replace(v2, self_contained=newest)
    assert plan_blocks(v1, reader, ROUTES["rewards"].columns, REWARD_TYPES) is None


def test_unsigned_columns_are_read_signed_and_checked_for_negative_numbers(schemas: SchemaSet) -> None:
    serve = schemas.latest("ServeEvent")
    types = {c: "String" for c in ROUTES["serves"].columns} | {"weights_version": "UInt64", "bucket": "UInt32",
                                                              "in_experiment": "Bool", "propensity": "Float64",
                                                              "timestamp": "DateTime64(3, 'UTC')", "context": "Map(String, String)"}
    plan = plan_blocks(serve, serve, ROUTES["serves"].columns, types)
    assert plan is not None
    assert "weights_version Int64" in plan.structure and "bucket Int64" in plan.structure
    assert "weights_version >= 0" in plan.checks and "bucket >= 0" in plan.checks
