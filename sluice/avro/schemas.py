"""Loading the kept contract versions and fingerprinting them as the Avro specification does.

A schema that names a type defined in another `.avsc` file is made self-contained the way
Java's `SchemaNormalization` sees it: the named type's definition is inlined at its *first*
occurrence (depth first, in field order) and referred to by full name afterwards. The
Parsing Canonical Form of that schema is what the CRC-64-AVRO fingerprint is taken of.
Fingerprinting a partly resolved schema, or one expanded at every occurrence, gives a
fingerprint no other Avro library accepts.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import to_parsing_canonical_form

from sluice.avro.exceptions import SchemaLoadError

PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
NAMED_KINDS = frozenset({"record", "error", "enum", "fixed"})
_VERSION_DIR = re.compile(r"^v(\d+)$")

# The contracts ship inside the package (package data), so an installed package and a
# checkout read the same files from the same place.
BUNDLED_SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"

_CRC64_EMPTY = 0xC15D213AA4D7A795


def _crc64_table() -> list[int]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (_CRC64_EMPTY & -(fp & 1))
        table.append(fp)
    return table


_CRC64_TABLE = _crc64_table()


def crc64_avro(data: bytes) -> int:
    """The 64-bit Rabin fingerprint ("CRC-64-AVRO") of the Avro specification."""
    fp = _CRC64_EMPTY
    for byte in data:
        fp = (fp >> 8) ^ _CRC64_TABLE[(fp ^ byte) & 0xFF]
    return fp


@dataclass(frozen=True)
class SchemaVersion:
    """One named schema as it stood in one contract version."""

    name: str  # full name, e.g. "io.sluice.ServeEvent"
    version: int  # the contract set it comes from (sluice/schemas/vN)
    canonical_form: str
    fingerprint: int  # CRC-64-AVRO of the canonical form
    self_contained: dict[str, Any] = field(repr=False, compare=False)  # JSON, named types inlined once
    wire: Any = field(repr=False, compare=False)  # fastavro-parsed, timestamps as plain longs

    @property
    def short_name(self) -> str:
        return self.name.rsplit(".", 1)[-1]

    @property
    def header_fingerprint(self) -> bytes:
        """The fingerprint as the 8 little-endian bytes of a single-object header."""
        return self.fingerprint.to_bytes(8, "little")


def _fullname(name: str, namespace: str | None) -> str:
    if "." in name or not namespace:
        return name
    return f"{namespace}.{name}"


def _collect_definitions(schema: Any, namespace: str | None, out: dict[str, dict[str, Any]], source: Path) -> None:
    """Record every named type defined anywhere inside `schema` under its full name."""
    if isinstance(schema, list):
        for branch in schema:
            _collect_definitions(branch, namespace, out, source)
    elif isinstance(schema, dict):
        kind = schema.get("type")
        if kind in NAMED_KINDS:
            full = _fullname(schema["name"], schema.get("namespace", namespace))
            if full in out and out[full] != schema:
                raise SchemaLoadError(f"{source}: type {full} is defined twice with different definitions")
            out[full] = schema
            namespace = full.rsplit(".", 1)[0] if "." in full else None
            for f in schema.get("fields", []):
                _collect_definitions(f["type"], namespace, out, source)
        elif kind == "array":
            _collect_definitions(schema["items"], namespace, out, source)
        elif kind == "map":
            _collect_definitions(schema["values"], namespace, out, source)
        elif isinstance(kind, (dict, list)):
            _collect_definitions(kind, namespace, out, source)


def inline_first_occurrence(schema: Any, definitions: dict[str, dict[str, Any]], *, where: str) -> Any:
    """Return a copy of `schema` in which every reference to a type of `definitions` is
    replaced by its definition at the first occurrence (depth first), and kept as a full
    name at later ones."""
    defined: set[str] = set()

    def walk(node: Any, namespace: str | None) -> Any:
        if isinstance(node, str):
            if node in PRIMITIVES:
                return node
            full = _fullname(node, namespace)
            if full in defined:
                return full
            if full not in definitions:
                raise SchemaLoadError(f"{where}: names type {node!r} ({full}), which no .avsc of its version defines")
            return walk(copy.deepcopy(definitions[full]), namespace)
        if isinstance(node, list):
            return [walk(b, namespace) for b in node]
        if not isinstance(node, dict):
            raise SchemaLoadError(f"{where}: {node!r} is not a schema")
        kind = node.get("type")
        if kind in NAMED_KINDS:
            full = _fullname(node["name"], node.get("namespace", namespace))
            defined.add(full)
            inner_ns = full.rsplit(".", 1)[0] if "." in full else None
            out = dict(node)
            # Write the full name so the definition means the same wherever it lands.
            out["name"] = full
            out.pop("namespace", None)
            if "fields" in node:
                out["fields"] = [dict(f, type=walk(f["type"], inner_ns)) for f in node["fields"]]
            return out
        if kind == "array":
            return dict(node, items=walk(node["items"], namespace))
        if kind == "map":
            return dict(node, values=walk(node["values"], namespace))
        if isinstance(kind, (dict, list, str)) and kind not in PRIMITIVES:
            return walk(kind, namespace)
        return node

    return walk(schema, None)


def _strip_timestamp_logical_types(node: Any) -> Any:
    """Timestamps travel as plain longs in Python (epoch ms); the binary encoding is the same."""
    if isinstance(node, list):
        return [_strip_timestamp_logical_types(b) for b in node]
    if isinstance(node, dict):
        out = {k: _strip_timestamp_logical_types(v) for k, v in node.items()}
        if out.get("logicalType") in ("timestamp-millis", "timestamp-micros") and out.get("type") == "long":
            out.pop("logicalType")
        return out
    return node


class SchemaSet:
    """All kept versions of the contracts, indexed by fingerprint and by name."""

    def __init__(self, versions: list[SchemaVersion]) -> None:
        self._by_fingerprint: dict[int, SchemaVersion] = {}
        self._latest: dict[str, SchemaVersion] = {}
        self._by_name: dict[str, list[SchemaVersion]] = {}
        for sv in sorted(versions, key=lambda s: (s.name, s.version)):
            seen = self._by_fingerprint.get(sv.fingerprint)
            if seen is None:
                self._by_fingerprint[sv.fingerprint] = sv
                self._by_name.setdefault(sv.name, []).append(sv)
            elif seen.canonical_form != sv.canonical_form:  # pragma: no cover - 2^-64
                raise SchemaLoadError(f"fingerprint collision between {seen.name} v{seen.version} and {sv.name} v{sv.version}")
            self._latest[sv.name] = sv

    @classmethod
    def bundled(cls) -> SchemaSet:
        """Every kept contract version shipped with this package (`sluice/schemas/vN`)."""
        return cls.load(BUNDLED_SCHEMAS)

    @classmethod
    def load(cls, root: Path) -> SchemaSet:
        """Load every `root/vN/*.avsc`. Raises `SchemaLoadError` naming the file at fault."""
        versions: list[SchemaVersion] = []
        dirs = [(int(m.group(1)), d) for d in root.iterdir() if d.is_dir() and (m := _VERSION_DIR.match(d.name))]
        if not dirs:
            raise SchemaLoadError(f"no contract versions (folders v1, v2, ...) under {root}")
        for number, folder in sorted(dirs):
            versions.extend(_load_version(number, folder))
        return cls(versions)

    def latest(self, name: str) -> SchemaVersion:
        """The newest kept version of a record, by full or short name."""
        full = self._resolve_name(name)
        return self._latest[full]

    def versions(self, name: str) -> list[SchemaVersion]:
        """Every distinct kept version of a record (by canonical form), oldest first."""
        return list(self._by_name[self._resolve_name(name)])

    def by_fingerprint(self, fingerprint: int) -> SchemaVersion | None:
        return self._by_fingerprint.get(fingerprint)

    @property
    def names(self) -> list[str]:
        return sorted(self._latest)

    def _resolve_name(self, name: str) -> str:
        if name in self._latest:
            return name
        matches = [n for n in self._latest if n.rsplit(".", 1)[-1] == name]
        if len(matches) != 1:
            raise KeyError(f"no schema named {name!r}; known: {', '.join(sorted(n.rsplit('.', 1)[-1] for n in self._latest))}")
        return matches[0]


def _load_version(number: int, folder: Path) -> list[SchemaVersion]:
    raw: dict[Path, Any] = {}
    definitions: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.glob("*.avsc")):
        try:
            raw[path] = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise SchemaLoadError(f"{path}: not valid JSON: {exc}") from exc
        _collect_definitions(raw[path], None, definitions, path)
    out = []
    for path, schema in raw.items():
        if not isinstance(schema, dict) or schema.get("type") not in NAMED_KINDS:
            raise SchemaLoadError(f"{path}: a contract file must hold one named type (record, enum or fixed)")
        full = _fullname(schema["name"], schema.get("namespace"))
        self_contained = inline_first_occurrence(schema, definitions, where=str(path))
        try:
            wire = fastavro.parse_schema(_strip_timestamp_logical_types(self_contained), _force=True)
            canonical = to_parsing_canonical_form(self_contained)
        except Exception as exc:  # fastavro raises several types for a bad schema
            raise SchemaLoadError(f"{path}: not a valid Avro schema: {exc}") from exc
        out.append(SchemaVersion(
            name=full, version=number, canonical_form=canonical,
            fingerprint=crc64_avro(canonical.encode("utf-8")),
            self_contained=self_contained, wire=wire,
        ))
    return out
