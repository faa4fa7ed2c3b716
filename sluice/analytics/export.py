"""Per-entity evaluation datasets: one row per serve with its attributed reward.

The rows offline evaluation needs (propensities for off-policy estimates, the weight-table
version for reproducibility, the context the caller passed) from ClickHouse, with every
event counted once however many times the sink saw it (rows are deduplicated by event id),
in a deterministic order. Columns are documented in docs/evaluation-dataset.md.
"""

from __future__ import annotations

import csv
from datetime import datetime
from pathlib import Path
from typing import Any

from sluice.errors import SluiceError

COLUMNS = ["serve_id", "timestamp", "experiment_id", "entity", "unit_id", "arm", "in_experiment", "propensity",
           "weights_version", "bucket", "context", "reward", "rewarded", "reward_events"]


class ExportError(SluiceError):
    """Nothing to export, or a bad format or filter, named in the message."""


def query_rows(client: Any, experiment: str, *, database: str = "sluice", entity: str | None = None,
               since: datetime | None = None, until: datetime | None = None, attribution_hours: float = 24.0,
               binary: bool = True) -> list[tuple]:
    """The dataset's rows, ordered by (entity, timestamp, serve_id)."""
    where = ["experiment_id = %(e)s"]
    params: dict[str, Any] = {"e": experiment, "window": int(attribution_hours * 3600)}
    if entity is not None:
        where.append("entity = %(entity)s")
        params["entity"] = entity
    if since is not None:
        where.append("timestamp >= %(since)s")
        params["since"] = since
    if until is not None:
        where.append("timestamp < %(until)s")
        params["until"] = until
    total = "max(r.value)" if binary else "sum(r.value)"
    sql = f"""
        WITH s AS (
            SELECT * FROM {database}.serves WHERE {' AND '.join(where)}
            ORDER BY event_id LIMIT 1 BY event_id
        ), r AS (
            SELECT serve_id, value, timestamp FROM {database}.rewards WHERE experiment_id = %(e)s
            ORDER BY event_id LIMIT 1 BY event_id
        )
        SELECT s.serve_id, s.timestamp, s.experiment_id, s.entity, s.unit_id, s.arm, s.in_experiment, s.propensity,
               s.weights_version, s.bucket, toJSONString(s.context),
               if(count(r.serve_id) = 0, 0, {total}), toBool(count(r.serve_id) > 0), count(r.serve_id)
        FROM s LEFT JOIN r ON r.serve_id = s.serve_id
             AND r.timestamp <= s.timestamp + toIntervalSecond(%(window)s)
        GROUP BY s.serve_id, s.timestamp, s.experiment_id, s.entity, s.unit_id, s.arm, s.in_experiment,
                 s.propensity, s.weights_version, s.bucket, s.context
        ORDER BY s.entity, s.timestamp, s.serve_id
        SETTINGS join_use_nulls = 1"""
    return client.query(sql, parameters=params).result_rows


def export(client: Any, experiment: str, out: Path, fmt: str, **filters: Any) -> int:
    """Write the dataset to `out` as parquet or csv; returns the number of rows."""
    if fmt not in ("parquet", "csv"):
        raise ExportError(f"format must be parquet or csv, not {fmt!r}")
    rows = query_rows(client, experiment, **filters)
    if not rows:
        raise ExportError(f"no serves of experiment {experiment!r} match "
                          f"{', '.join(f'{k}={v}' for k, v in filters.items() if v is not None) or 'the request'}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        with out.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(COLUMNS)
            for row in rows:
                writer.writerow([row[1].isoformat() if i == 1 else v for i, v in enumerate(row)])
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        columns = list(zip(*rows))
        table = pa.table({name: list(col) for name, col in zip(COLUMNS, columns)})
        pq.write_table(table, out)
    return len(rows)
