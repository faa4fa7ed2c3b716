"""Per-entity evaluation datasets: one row per serve with its attributed reward.

The rows offline evaluation needs (propensities for off-policy estimates, the weight-table
version for reproducibility, the context the caller passed) from ClickHouse's
`attributed_serves` view, which attributes rewards by the stream worker's rules and the
experiment's spec (`sluice.analytics.attribution`): every event counted once however many
times the sink saw it, in a deterministic order. Columns are documented in
docs/evaluation-dataset.md.
"""

from __future__ import annotations

import csv
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sluice.analytics.attribution import experiment_spec
from sluice.errors import SluiceError

COLUMNS = ["serve_id", "timestamp", "experiment_id", "entity", "unit_id", "arm", "in_experiment", "propensity",
           "weights_version", "bucket", "context", "reward", "rewarded", "reward_events"]


class ExportError(SluiceError):
    """Nothing to export, or a bad format or filter, named in the message."""


def query_rows(client: Any, experiment: str, *, database: str = "sluice", entity: str | None = None,
               since: datetime | None = None, until: datetime | None = None) -> list[tuple]:
    """The dataset's rows, ordered by (entity, timestamp, serve_id). Raises AttributionError
    when the experiment has no spec in ClickHouse."""
    experiment_spec(client, experiment, database)
    where = ["1"]
    params: dict[str, Any] = {"e": experiment}
    if entity is not None:
        where.append("entity = {entity:String}")
        params["entity"] = entity
    if since is not None:
        where.append("toUnixTimestamp64Milli(timestamp) >= {since:Int64}")
        params["since"] = _epoch_ms(since)
    if until is not None:
        where.append("toUnixTimestamp64Milli(timestamp) < {until:Int64}")
        params["until"] = _epoch_ms(until)
    sql = f"""
        SELECT serve_id, timestamp, experiment_id, entity, unit_id, arm, in_experiment, propensity, weights_version,
               bucket, toJSONString(context), reward, rewarded, reward_events
        FROM {database}.attributed_serves(experiment = {{e:String}})
        WHERE {' AND '.join(where)}
        ORDER BY entity, timestamp, serve_id"""
    return client.query(sql, parameters=params).result_rows


def _epoch_ms(t: datetime) -> int:
    """Epoch milliseconds of `t`; a naive time is UTC."""
    return round((t if t.tzinfo else t.replace(tzinfo=timezone.utc)).timestamp() * 1000)


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
