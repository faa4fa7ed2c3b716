"""Per-entity evaluation datasets: one row per serve with its attributed reward.

The rows offline evaluation needs (propensities for off-policy estimates, the weight-table
version for reproducibility, the context the caller passed) from ClickHouse's
`attributed_serves` view, which attributes rewards by the stream worker's rules and the
experiment's spec (`sluice.analytics.attribution`): every event counted once however many
times the sink saw it, in a deterministic order. Columns are documented in
docs/evaluation-dataset.md.

Feature sets the experiment declares (docs/feature-sets.md) become columns `fs.<name>.<column>`
only when asked for; the `context` column never shows their values.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sluice.analytics.attribution import experiment_spec
from sluice.analytics.features import FeatureJoiner, MissingFeatureFile, warn_missing
from sluice.core.features import FeatureSetError, resolve
from sluice.core.spec import FEATURE_KEY_PREFIX, FeatureSet, SpecError, spec_from_record
from sluice.errors import SluiceError

COLUMNS = ["serve_id", "timestamp", "experiment_id", "entity", "unit_id", "arm", "in_experiment", "propensity",
           "weights_version", "bucket", "context", "reward", "rewarded", "reward_events"]


class ExportError(SluiceError):
    """Nothing to export, or a bad format or filter, named in the message."""


def query_rows(client: Any, experiment: str, *, database: str = "sluice", entity: str | None = None,
               since: datetime | None = None, until: datetime | None = None,
               feature_sets: Sequence[FeatureSet] = (),
               on_missing: Callable[[MissingFeatureFile], None] = warn_missing) -> list[tuple]:
    """The dataset's rows, ordered by (entity, timestamp, serve_id): the columns of `COLUMNS`,
    then those of each feature set in `feature_sets` (`FeatureJoiner.column_names`). Raises
    AttributionError when the experiment has no spec in ClickHouse."""
    experiment_spec(client, experiment, database)
    where = ["1"]
    params: dict[str, Any] = {"e": experiment, "fs": FEATURE_KEY_PREFIX}
    if entity is not None:
        where.append("entity = {entity:String}")
        params["entity"] = entity
    if since is not None:
        where.append("toUnixTimestamp64Milli(timestamp) >= {since:Int64}")
        params["since"] = _epoch_ms(since)
    if until is not None:
        where.append("toUnixTimestamp64Milli(timestamp) < {until:Int64}")
        params["until"] = _epoch_ms(until)
    # The feature sets' logged values, only when asked for: a plain export reads no more than before.
    feature_values = ", mapFilter((k, v) -> startsWith(k, {fs:String}), context)" if feature_sets else ""
    sql = f"""
        SELECT serve_id, timestamp, experiment_id, entity, unit_id, arm, in_experiment, propensity, weights_version,
               bucket, toJSONString(mapFilter((k, v) -> NOT startsWith(k, {{fs:String}}), context)), reward, rewarded,
               reward_events{feature_values}
        FROM {database}.attributed_serves(experiment = {{e:String}})
        WHERE {' AND '.join(where)}
        ORDER BY entity, timestamp, serve_id"""
    rows = client.query(sql, parameters=params).result_rows
    if not feature_sets:
        return rows
    joiners = [FeatureJoiner(fs, on_missing) for fs in feature_sets]
    out = []
    for row in rows:
        entity_, unit_id, context, ts = row[3], row[4], row[-1], _epoch_ms(row[1])
        out.append(row[:-1] + tuple(v for j in joiners for v in j.values(entity_, ts, unit_id, context)))
    for j in joiners:
        j.check_found()
    return out


def declared_feature_sets(client: Any, experiment: str, database: str = "sluice") -> list[FeatureSet]:
    """Every feature set any version of the experiment's spec declared, the latest version's
    first: a set a newer version dropped can still be exported from the serves it has."""
    rows = client.query(f"SELECT spec_json FROM {database}.experiments WHERE experiment_id = {{e:String}} "
                        "ORDER BY spec_version DESC, updated_at DESC", parameters={"e": experiment}).result_rows
    found: dict[str, FeatureSet] = {}
    for (spec_json,) in rows:
        try:
            spec = spec_from_record({"spec_json": spec_json})
        except SpecError:  # an old version today's rules refuse; the latest one is checked by experiment_spec
            continue
        for fs in spec.feature_sets:
            found.setdefault(fs.ref, fs)
    return list(found.values())


def feature_sets_of(client: Any, experiment: str, refs: Sequence[str], database: str = "sluice") -> list[FeatureSet]:
    """The feature sets `refs` (`name`, `name:version`) name among the experiment's; raises
    ExportError naming an unknown one, or two versions of one set (their columns would clash)."""
    declared = declared_feature_sets(client, experiment, database)
    try:
        chosen = [resolve(ref, declared) for ref in refs]
    except FeatureSetError as exc:
        raise ExportError(f"experiment {experiment!r}: {exc}") from None
    names = [fs.name for fs in chosen]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ExportError(f"feature set(s) {twice} asked for more than once; export one version of a set at a time")
    return chosen


def _epoch_ms(t: datetime) -> int:
    """Epoch milliseconds of `t`; a naive time is UTC."""
    return round((t if t.tzinfo else t.replace(tzinfo=timezone.utc)).timestamp() * 1000)


def export(client: Any, experiment: str, out: Path, fmt: str, *, feature_sets: Sequence[str] = (),
           on_missing: Callable[[MissingFeatureFile], None] = warn_missing, **filters: Any) -> int:
    """Write the dataset to `out` as parquet or csv; returns the number of rows. `feature_sets`
    (`name` or `name:version`, declared by the spec) add their columns `fs.<name>.<column>`;
    `on_missing` hears of every missing parquet feature file (its serves get nulls)."""
    if fmt not in ("parquet", "csv"):
        raise ExportError(f"format must be parquet or csv, not {fmt!r}")
    database = filters.get("database", "sluice")
    experiment_spec(client, experiment, database)
    chosen = feature_sets_of(client, experiment, feature_sets, database) if feature_sets else []
    rows = query_rows(client, experiment, feature_sets=chosen, on_missing=on_missing, **filters)
    if not rows:
        raise ExportError(f"no serves of experiment {experiment!r} match "
                          f"{', '.join(f'{k}={v}' for k, v in filters.items() if v is not None) or 'the request'}")
    columns = COLUMNS + [name for fs in chosen for name in FeatureJoiner(fs).column_names]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        with out.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(columns)
            for row in rows:
                writer.writerow([row[1].isoformat() if i == 1 else v for i, v in enumerate(row)])
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({name: list(col) for name, col in zip(columns, zip(*rows))})
        pq.write_table(table, out)
    return len(rows)
