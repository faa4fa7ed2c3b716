"""Feature sets as the serving path and the datasets see them: pure naming and selection.

A context feature set's values are logged in the serve's context under a reserved,
versioned key, `sluice.fs:<name>@<version>:<column>`, instead of the caller's column
name: the context that models without the set train on (`base_context`) stays what it was
before the experiment declared the set, and a value records which version of the set it
was logged under. A dataset shows a set's values as columns `fs.<name>.<column>`.

Everything here takes values and returns values; reading parquet files is in
`sluice.analytics.features`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import date

from sluice.core.errors import CoreInputError
from sluice.core.spec import FEATURE_KEY_PREFIX, ExperimentSpec, FeatureSet

ContextPairs = tuple[tuple[str, str], ...]


class FeatureSetError(CoreInputError):
    """A feature set that is not declared, or is named ambiguously; the message says which."""


def feature_key(feature_set: FeatureSet, column: str) -> str:
    """The context key a context feature set's `column` is logged under."""
    return f"{FEATURE_KEY_PREFIX}{feature_set.ref}:{column}"


def column_name(feature_set: FeatureSet, column: str) -> str:
    """The dataset's column of a feature set's `column` (`fs.recency.visits`)."""
    return f"fs.{feature_set.name}.{column}"


def context_feature_keys(spec: ExperimentSpec) -> dict[str, tuple[str, ...]]:
    """Caller's context column → the reserved keys it is logged under, for the spec's context
    feature sets (a column two sets name is logged under both). Empty without any."""
    keys: dict[str, tuple[str, ...]] = {}
    for fs in spec.feature_sets:
        for column in fs.source.context or ():
            keys[column] = keys.get(column, ()) + (feature_key(fs, column),)
    return keys


def logged_context(pairs: ContextPairs, keys: Mapping[str, tuple[str, ...]]) -> ContextPairs:
    """The context pairs as they are logged: a column a feature set names under its reserved
    key(s) instead of its own name, the rest unchanged and in order."""
    out: list[tuple[str, str]] = []
    for k, v in pairs:
        renamed = keys.get(k)
        if renamed is None:
            out.append((k, v))
        else:
            out.extend((r, v) for r in renamed)
    return tuple(out)


def base_context(context: Mapping[str, str]) -> dict[str, str]:
    """The logged context without any feature set's values: what a model that declares no
    feature set is trained on."""
    return {k: v for k, v in context.items() if not k.startswith(FEATURE_KEY_PREFIX)}


def context_values(feature_set: FeatureSet, context: Mapping[str, str]) -> tuple[str | None, ...]:
    """A context feature set's values in a logged context, one per column (None: the caller
    did not pass it, or the serve was logged before the spec declared this version)."""
    return tuple(context.get(feature_key(feature_set, c)) for c in feature_set.source.context or ())


def parquet_path(feature_set: FeatureSet, entity: str, day: date) -> str:
    """The file of a parquet feature set that holds `entity`'s values for serves on `day` (UTC)."""
    template = feature_set.source.parquet
    if template is None:
        raise FeatureSetError(f"feature set {feature_set.ref} comes from the context, not from parquet files")
    return template.format(entity=entity, date=day.isoformat(), name=feature_set.name, version=feature_set.version)


def parse_ref(ref: str) -> tuple[str, str | None]:
    """`name`, `name:version` or `name@version` → (name, version or None)."""
    name, sep, version = ref.replace("@", ":", 1).partition(":")
    if not name or (sep and not version):
        raise FeatureSetError(f"feature set {ref!r} must be NAME, NAME:VERSION or NAME@VERSION")
    return name, version or None


def resolve(ref: str, declared: Iterable[FeatureSet]) -> FeatureSet:
    """The feature set `ref` names among `declared` (newest declaration first: the latest spec's
    sets, then earlier versions'). Without a version, the one the newest declaration of that
    name has."""
    name, version = parse_ref(ref)
    sets = list(declared)
    for fs in sets:
        if fs.name == name and (version is None or fs.version == version):
            return fs
    have = ", ".join(dict.fromkeys(fs.ref for fs in sets)) or "none"
    raise FeatureSetError(f"feature set {ref!r} is not declared by the experiment (declared: {have})")
