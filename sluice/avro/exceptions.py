"""Errors of the Avro adapter. Each message says what was wrong with which input."""

from sluice.errors import SluiceError


class SerdeError(SluiceError):
    """Base class: a message could not be encoded or decoded."""


class SchemaLoadError(SerdeError):
    """A `.avsc` file is not valid JSON, not a valid schema, or names an undefined type."""


class EncodeError(SerdeError):
    """A record does not fit its schema (missing field, wrong type, unknown enum symbol)."""


class NotSingleObjectError(SerdeError):
    """The bytes do not start with the single-object marker C3 01, or are too short for a header."""


class UnknownFingerprintError(SerdeError):
    """The header names a schema fingerprint that no kept schema version has."""


class UnexpectedSchemaError(SerdeError):
    """The message is valid, but of another record type than the caller expected."""


class TruncatedMessageError(SerdeError):
    """The body ended before the writer schema was fully read."""


class CorruptBodyError(SerdeError):
    """The body cannot be read with its writer schema (bad UTF-8, bad union index, trailing bytes...)."""
