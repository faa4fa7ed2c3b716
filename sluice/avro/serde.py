"""Avro single-object encoding, and the one small interface every serde implements.

Wire format (Avro specification, "Single-object encoding"):
    C3 01 | CRC-64-AVRO fingerprint of the writer schema's canonical form, 8 bytes little-endian | Avro binary body
A Confluent schema-registry framing would be another `Serde` beside this one.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Protocol

from fastavro import schemaless_reader, schemaless_writer
from fastavro.validation import ValidationError, validate

from sluice.avro.exceptions import (
    CorruptBodyError,
    EncodeError,
    NotSingleObjectError,
    TruncatedMessageError,
    UnexpectedSchemaError,
    UnknownFingerprintError,
)
from sluice.avro.schemas import SchemaSet, SchemaVersion

MAGIC = b"\xc3\x01"
HEADER_LEN = 10


@dataclass(frozen=True)
class Decoded:
    """A decoded message: which schema wrote it, and the record read with the newest one."""

    schema: str  # full name of the record type
    writer_version: int  # contract version the writer used
    record: dict[str, Any]


class Serde(Protocol):
    """What Kafka adapters need from a wire format."""

    def encode(self, schema: str, record: dict[str, Any]) -> bytes: ...

    def decode(self, data: bytes, expected: str | None = None) -> Decoded: ...


class SingleObjectSerde:
    """Avro single-object encoding over the kept contract versions.

    Writes with the newest version of each record; reads any kept version, resolving the
    writer schema by fingerprint and reading into the newest version of that record.
    """

    def __init__(self, schemas: SchemaSet, *, validate_on_encode: bool = True) -> None:
        self.schemas = schemas
        self.validate_on_encode = validate_on_encode

    def encode(self, schema: str, record: dict[str, Any], *, version: SchemaVersion | None = None) -> bytes:
        """Encode `record` with the newest version of `schema` (or the given `version`).

        Raises `EncodeError` naming the record type and what did not fit.
        """
        sv = version or self.schemas.latest(schema)
        if self.validate_on_encode:
            try:
                validate(record, sv.wire, raise_errors=True)
            except ValidationError as exc:
                raise EncodeError(f"{sv.short_name} record does not fit its schema: {_validation_message(exc)}") from exc
        buf = io.BytesIO()
        buf.write(MAGIC)
        buf.write(sv.header_fingerprint)
        try:
            schemaless_writer(buf, sv.wire, record)
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise EncodeError(f"{sv.short_name} record does not fit its schema: {exc!r}") from exc
        return buf.getvalue()

    def writer_of(self, data: bytes) -> SchemaVersion:
        """The schema version named by a message's header, without reading the body."""
        if len(data) < HEADER_LEN or data[:2] != MAGIC:
            if data[:2] == MAGIC:
                raise NotSingleObjectError(f"message of {len(data)} bytes is shorter than the 10-byte single-object header")
            raise NotSingleObjectError(
                f"not Avro single-object encoded: expected marker C3 01, got {data[:2].hex(' ').upper() or 'no bytes'}"
            )
        fingerprint = int.from_bytes(data[2:HEADER_LEN], "little")
        sv = self.schemas.by_fingerprint(fingerprint)
        if sv is None:
            raise UnknownFingerprintError(
                f"unknown writer schema fingerprint {data[2:HEADER_LEN].hex()} (CRC-64-AVRO {fingerprint:#018x}): "
                "no kept contract version has it"
            )
        return sv

    def decode(self, data: bytes, expected: str | None = None) -> Decoded:
        """Decode one message. `expected` (full or short record name) rejects other types.

        Raises `NotSingleObjectError`, `UnknownFingerprintError`, `UnexpectedSchemaError`,
        `TruncatedMessageError` or `CorruptBodyError`, each naming the problem.
        """
        writer = self.writer_of(data)
        if expected is not None and expected not in (writer.name, writer.short_name):
            raise UnexpectedSchemaError(f"expected a {expected} message, got a {writer.short_name} (contract v{writer.version})")
        reader = self.schemas.latest(writer.name)
        body = io.BytesIO(data)
        body.seek(HEADER_LEN)
        try:
            if reader.fingerprint == writer.fingerprint:
                record = schemaless_reader(body, writer.wire, None)
            else:
                record = schemaless_reader(body, writer.wire, reader.wire)
        except (EOFError, StopIteration) as exc:
            raise TruncatedMessageError(
                f"{writer.short_name} body of {len(data) - HEADER_LEN} bytes ended before the record was complete"
            ) from exc
        except Exception as exc:  # fastavro raises IndexError, UnicodeDecodeError, ValueError... on bad bytes
            raise CorruptBodyError(f"{writer.short_name} body cannot be read with its writer schema: {exc!r}") from exc
        if body.tell() != len(data):
            raise CorruptBodyError(
                f"{writer.short_name} body has {len(data) - body.tell()} trailing bytes after the record"
            )
        return Decoded(schema=writer.name, writer_version=writer.version, record=record)


def _validation_message(exc: ValidationError) -> str:
    errors = exc.args[0] if exc.args else []
    if isinstance(errors, list):
        return "; ".join(str(e) for e in errors)
    return str(errors)
