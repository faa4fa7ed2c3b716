"""Avro contracts and their wire format.

`SchemaSet.bundled()` loads every kept version of the contracts shipped in `sluice/schemas/`
(`SchemaSet.load(folder)` any other set of them); `SingleObjectSerde`
encodes and decodes Avro single-object encoding (the Avro specification's
`C3 01` + 8-byte CRC-64-AVRO fingerprint + binary body), which any standard Avro library
(Java's `BinaryMessageDecoder`, for one) can read. Decoding errors are `SerdeError`s.
"""

from sluice.avro.exceptions import (
    EncodeError,
    NotSingleObjectError,
    SchemaLoadError,
    SerdeError,
    TruncatedMessageError,
    CorruptBodyError,
    UnknownFingerprintError,
    UnexpectedSchemaError,
)
from sluice.avro.schemas import BUNDLED_SCHEMAS, SchemaSet, SchemaVersion, crc64_avro
from sluice.avro.serde import Decoded, Serde, SingleObjectSerde

__all__ = [
    "BUNDLED_SCHEMAS",
    "CorruptBodyError",
    "Decoded",
    "EncodeError",
    "NotSingleObjectError",
    "SchemaLoadError",
    "SchemaSet",
    "SchemaVersion",
    "Serde",
    "SerdeError",
    "SingleObjectSerde",
    "TruncatedMessageError",
    "UnexpectedSchemaError",
    "UnknownFingerprintError",
    "crc64_avro",
]
