"""Helpers for the tests of what reads ClickHouse (report, export, dashboards): specs landed
as the sink lands them, and serves and rewards with serve tokens for ids."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sluice.core.serve_token import format_serve_id
from sluice.core.spec import ExperimentSpec, spec_from_mapping
from sluice.experiments import spec_record
from streams.sink.rows import EXPERIMENT_COLUMNS, experiment_rows

SERVE_COLS = ["event_id", "serve_id", "experiment_id", "entity", "unit_id", "arm", "in_experiment", "propensity",
              "weights_version", "bucket", "timestamp", "context"]
REWARD_COLS = ["event_id", "serve_id", "experiment_id", "entity", "name", "value", "latency_ms", "error", "timestamp"]


def spec(exp_id: str, arms: list[str], *, reward_type: str = "binary", reward_name: str = "click",
         attribution_hours: float = 24.0, window_days: float = 7.0, spec_version: int = 1) -> ExperimentSpec:
    return spec_from_mapping({
        "id": exp_id, "spec_version": spec_version, "status": "running", "salt": f"{exp_id}-salt", "unit": "user_id",
        "entity": "site", "parameters": [{"name": "model", "type": "string"}],
        "arms": [{"name": a, "values": {"model": f"m-{a}"}} for a in arms], "default_arm": arms[0],
        "policy": {"name": "thompson", "params": {}},
        "reward": {"type": reward_type, "name": reward_name, "attribution_window_hours": attribution_hours},
        "window_days": window_days,
    })


def land_spec(client: Any, database: str, experiment: ExperimentSpec, updated_at_ms: int | None = None) -> None:
    """Insert `experiment` into `database`.experiments with the sink's own row function."""
    record = spec_record(experiment, updated_at_ms)
    record["updated_at"] = datetime.fromtimestamp(record["updated_at"] / 1000, timezone.utc)  # as Avro decodes it
    client.insert(f"{database}.experiments", list(experiment_rows(record)), column_names=list(EXPERIMENT_COLUMNS))


def token(i: int, at: datetime, arm: str, in_experiment: bool = True) -> str:
    """The serve id an SDK would give serve number `i`."""
    return format_serve_id(f"{i:024x}", round(at.timestamp() * 1000), in_experiment, arm)
