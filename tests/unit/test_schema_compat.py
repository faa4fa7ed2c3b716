"""Every kept contract change is backward and forward compatible: data written with any
version reads with any other (old data with the new schema, new data with the old)."""

from __future__ import annotations

import io
import itertools
from typing import Any

import fastavro
import pytest

from sluice.avro import SchemaSet

PRIMITIVE_SAMPLES = {"null": None, "boolean": True, "int": 7, "long": 1_763_900_000_000, "float": 1.5, "double": 0.25, "bytes": b"\x01", "string": "s"}


def sample(schema: Any, named: dict[str, Any]) -> Any:
    """A value of `schema` that sets every field, taking the non-null branch of unions."""
    if isinstance(schema, str):
        return PRIMITIVE_SAMPLES[schema] if schema in PRIMITIVE_SAMPLES else sample(named[schema], named)
    if isinstance(schema, list):
        return sample(next(b for b in schema if b != "null"), named)
    kind = schema["type"]
    if kind == "record":
        named[schema["name"]] = schema
        return {f["name"]: sample(f["type"], named) for f in schema["fields"]}
    if kind == "enum":
        named[schema["name"]] = schema
        return schema["symbols"][-1]
    if kind == "array":
        return [sample(schema["items"], named), sample(schema["items"], named)]
    if kind == "map":
        return {"k": sample(schema["values"], named)}
    if kind == "fixed":
        return b"\x00" * schema["size"]
    return sample(kind, named)


SCHEMAS = SchemaSet.bundled()
PAIRS = [
    pytest.param(a, b, id=f"{a.short_name}-v{a.version}-to-v{b.version}")
    for name in SCHEMAS.names
    for a, b in itertools.permutations(SCHEMAS.versions(name), 2)
]


def test_some_record_has_more_than_one_kept_version() -> None:
    assert PAIRS, "no schema has two versions: the compatibility test below would check nothing"


@pytest.mark.parametrize(("writer", "reader"), PAIRS)
def test_data_of_one_version_reads_with_the_other(writer: Any, reader: Any) -> None:
    record = sample(writer.self_contained, {})
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, writer.wire, record)
    buf.seek(0)
    read = fastavro.schemaless_reader(buf, writer.wire, reader.wire)
    reader_fields = {f["name"]: f for f in reader.self_contained["fields"]}
    for name, field in reader_fields.items():
        if name in record:
            assert read[name] == record[name], f"{name} changed between v{writer.version} and v{reader.version}"
        else:
            assert read[name] == field["default"], f"{name} absent from v{writer.version} must read as its default"
