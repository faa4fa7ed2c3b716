"""From an MLflow model version to Sluice's `ModelVersion`: pure, no I/O.

| Sluice | MLflow |
| --- | --- |
| model type | the registered model's name (a Sluice name: letters, digits, `_ . -`) |
| version | the model version's number (a type's version names one model in Sluice, as in MLflow) |
| entity | tag `sluice.entity`; several entities (a group job's model) separated by commas |
| trained at | the run's end time, else the version's creation time |
| data window | tags `sluice.data_start`, `sluice.data_end` (ISO 8601, UTC unless it says, or epoch ms) |
| rows | tag `sluice.rows`, else the `num_rows` of the run's dataset input |
| dataset fingerprint | tag `sluice.dataset_fingerprint`, else `mlflow-digest:<digest>` of the run's dataset input |
| feature set | tag `sluice.feature_set`, `NAME@VERSION` |
| artifact URI | the version's `storage_location` when the server gives one, else its `source` |
| offline metrics | the run's metrics (latest value of each) |
| status | `serving` while a serving alias (`champion`, `serving`) points at the version |

A tag is looked up on the model version, then on its run, then on the registered model,
so what is the same for every version (`sluice.feature_set`) can be set once on the model.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sluice.core.spec import NAME_PATTERN
from sluice.models import ModelRegistryError, ModelStatus, ModelVersion

ENTITY_TAG = "sluice.entity"
FEATURE_SET_TAG = "sluice.feature_set"
DATA_START_TAG = "sluice.data_start"
DATA_END_TAG = "sluice.data_end"
ROWS_TAG = "sluice.rows"
FINGERPRINT_TAG = "sluice.dataset_fingerprint"
SERVING_ALIASES = ("champion", "serving")
SOURCE = "mlflow"
# The reason a status carries when an alias set it, so that only a status an alias gave is
# taken back when the alias goes (one an experiment gave stays).
ALIAS_REASON = "MLflow alias"


@dataclass(frozen=True)
class Skipped:
    """An MLflow version that is not registered, and why (the message names what is missing)."""

    name: str
    version: str
    reason: str

    def __str__(self) -> str:
        return f"MLflow model {self.name!r} version {self.version} skipped: {self.reason}"


def tags_of(obj: Mapping[str, Any] | None) -> dict[str, str]:
    """MLflow's tag list ([{key, value}]) as a dict."""
    return {t["key"]: t.get("value", "") for t in (obj or {}).get("tags", []) if "key" in t}


def aliases_by_version(registered_model: Mapping[str, Any]) -> dict[str, list[str]]:
    """The registered model's aliases ([{alias, version}]) per version number."""
    out: dict[str, list[str]] = {}
    for a in registered_model.get("aliases", []):
        out.setdefault(str(a.get("version")), []).append(a.get("alias", ""))
    return out


def sluice_versions(registered_model: Mapping[str, Any], version: Mapping[str, Any],
                    run: Mapping[str, Any] | None) -> list[ModelVersion] | Skipped:
    """The Sluice versions (one per entity) an MLflow model version stands for, as
    candidates; or why it cannot be registered.

    `registered_model`, `version` and `run` are MLflow's REST answers
    (`registered-models/get`, `model-versions/get`, `runs/get`); `run` is None for a
    version without one."""
    name, number = str(version.get("name", "")), str(version.get("version", ""))

    def skipped(reason: str) -> Skipped:
        return Skipped(name, number, reason)

    if not re.match(NAME_PATTERN, name) or len(name) > 100:
        return skipped(f"its registered model's name {name!r} is not a Sluice model type (letters, digits, "
                       "'_', '.' and '-', starting with a letter or digit)")
    if not number.isdigit() or int(number) < 1:
        return skipped(f"its version {number!r} is not a positive integer")
    if version.get("status", "READY") != "READY":
        return skipped(f"its status is {version.get('status')} (registered once READY)")
    run_tags = tags_of((run or {}).get("data"))
    tags = {**tags_of(registered_model), **run_tags, **tags_of(version)}
    dataset = _training_dataset(run)
    missing = [t for t in (ENTITY_TAG, FEATURE_SET_TAG, DATA_START_TAG, DATA_END_TAG) if not tags.get(t)]
    if not tags.get(ROWS_TAG) and dataset.rows is None:
        missing.append(f"{ROWS_TAG} (or a dataset input of the run with num_rows)")
    if not tags.get(FINGERPRINT_TAG) and not dataset.digest:
        missing.append(f"{FINGERPRINT_TAG} (or a dataset input of the run with a digest)")
    if missing:
        return skipped(f"missing tag{'s' if len(missing) > 1 else ''} {', '.join(missing)} (on the version, its "
                       "run or the registered model)")
    feature_set, at, feature_set_version = tags[FEATURE_SET_TAG].rpartition("@")
    if not at or not feature_set or not feature_set_version:
        return skipped(f"tag {FEATURE_SET_TAG} is {tags[FEATURE_SET_TAG]!r}, not NAME@VERSION")
    try:
        data_start = _moment_ms(tags[DATA_START_TAG], DATA_START_TAG)
        data_end = _moment_ms(tags[DATA_END_TAG], DATA_END_TAG)
        rows = _rows(tags.get(ROWS_TAG), dataset.rows)
    except ValueError as exc:
        return skipped(str(exc))
    entities = [e.strip() for e in tags[ENTITY_TAG].split(",") if e.strip()]
    if not entities:
        return skipped(f"tag {ENTITY_TAG} is {tags[ENTITY_TAG]!r}, no entity")
    run_info = (run or {}).get("info", {})
    trained_at = int(run_info.get("end_time") or version.get("creation_timestamp") or 0)
    artifact_uri = str(version.get("storage_location") or version.get("source") or "")
    fingerprint = tags.get(FINGERPRINT_TAG) or f"mlflow-digest:{dataset.digest}"
    metrics = {str(m["key"]): float(m["value"]) for m in (run or {}).get("data", {}).get("metrics", [])
               if "key" in m and "value" in m}
    reason = f"registered from MLflow model {name!r} version {number}" + \
        (f" (run {run_info['run_id']})" if run_info.get("run_id") else "")
    try:
        return [ModelVersion(entity, name, int(number), trained_at, data_start, data_end, rows, fingerprint,
                             feature_set, feature_set_version, artifact_uri, metrics, source=SOURCE, reason=reason)
                for entity in entities]
    except ModelRegistryError as exc:
        return skipped(str(exc))


def status_change(current: ModelVersion, aliases: Collection[str],
                  serving_aliases: Collection[str] = SERVING_ALIASES) -> tuple[ModelStatus, str] | None:
    """The status the version's MLflow aliases call for, with its reason, or None when it
    stays. A serving alias makes it `serving`; when no serving alias points at it any more,
    a version an alias made `serving` goes back to `candidate`. A retired version stays
    retired, and a version an experiment made `serving` is not taken back by an alias."""
    if current.status == "retired":
        return None
    serving = sorted(a for a in aliases if a in serving_aliases)
    if serving and current.status != "serving":
        return "serving", f"{ALIAS_REASON} '{serving[0]}' points at it"
    if not serving and current.status == "serving" and current.reason.startswith(ALIAS_REASON):
        return "candidate", f"{ALIAS_REASON} moved away: no serving alias ({', '.join(sorted(serving_aliases))}) " \
                            "points at it"
    return None


@dataclass(frozen=True)
class _Dataset:
    digest: str | None = None
    rows: int | None = None


def _training_dataset(run: Mapping[str, Any] | None) -> _Dataset:
    """The run's training dataset input (the one tagged `mlflow.data.context=training`, else
    the first): its digest and, from its profile, its row count."""
    inputs = ((run or {}).get("inputs") or {}).get("dataset_inputs") or []
    if not inputs:
        return _Dataset()
    chosen = next((i for i in inputs if tags_of(i).get("mlflow.data.context") == "training"), inputs[0])
    dataset = chosen.get("dataset") or {}
    rows = None
    try:
        profile = json.loads(dataset.get("profile") or "{}")
        if isinstance(profile, dict) and isinstance(profile.get("num_rows"), int):
            rows = profile["num_rows"]
    except ValueError:
        pass
    return _Dataset(dataset.get("digest") or None, rows)


def _moment_ms(text: str, tag: str) -> int:
    """Epoch milliseconds, or an ISO 8601 time (UTC unless it says otherwise)."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"tag {tag} is {text!r}, neither epoch milliseconds nor an ISO 8601 time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp() * 1000)


def _rows(tag: str | None, from_dataset: int | None) -> int:
    if tag is None or tag == "":
        return from_dataset or 0
    text = tag.strip().replace("_", "").replace(",", "")
    if not text.isdigit():
        raise ValueError(f"tag {ROWS_TAG} is {tag!r}, not a whole number of rows")
    return int(text)
