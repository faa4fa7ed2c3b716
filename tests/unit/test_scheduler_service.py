"""The scheduler service's pure parts: its fleet from the registry and the weight tables,
open jobs, and the job records; the policies file; the trainer's entry points."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from services.scheduler import fleet_from, job_records, live_versions, open_jobs
from services.trainer import TrainerError, resolve, run_entry
from sluice.core.scheduler import DAY_MS, SchedulerInputError, plan, scheduler_config
from sluice.models import ModelVersion

ROOT = Path(__file__).resolve().parents[2]
NOW = 1_800_000_000_000


def version(entity: str, v: int, *, age_days: float = 1.0, status: str = "serving", **metrics: float) -> ModelVersion:
    trained = NOW - int(age_days * DAY_MS)
    return ModelVersion(entity, "gbdt", v, trained, trained - 28 * DAY_MS, trained, 100_000, "sha256:x", "clicks",
                        "3", f"s3://m/{entity}/{v}", metrics, status=status)  # type: ignore[arg-type]


def table(entity: str, stats: dict[str, tuple[int, float]]) -> dict:
    return {"experiment_id": "ranking", "entity": entity, "window_start": NOW - 7 * DAY_MS, "window_end": NOW,
            "reward_type": "binary",
            "statistics": [{"arm": a, "serves": n, "count": n, "sum": n * rate, "sum_squares": n * rate}
                           for a, (n, rate) in stats.items()]}


def test_the_newest_live_version_of_each_model_stands_for_it() -> None:
    vs = [version("a", 1), version("a", 3, status="retired"), version("a", 2), version("b", 1)]
    assert [(v.entity, v.version) for v in live_versions(vs)] == [("a", 2), ("b", 1)]


def test_the_fleet_reads_traffic_and_rewards_from_the_tables() -> None:
    vs = [version("old", 1, age_days=10), version("decayed", 2, reward_at_entry=0.08), version("fresh", 3)]
    tables = [table("old", {"gbdt-v1": (7000, 0.05), "baseline": (7000, 0.05)}),
              table("decayed", {"gbdt-v2": (7000, 0.05), "baseline": (700, 0.06)}),
              table("fresh", {"gbdt-v3": (7000, 0.05)})]
    fleet, live = fleet_from(vs, tables, NOW)
    assert [v.entity for v in live] == ["decayed", "fresh", "old"]
    assert fleet.serves_per_day.tolist() == pytest.approx([7700 / 7, 1000, 2000])
    assert fleet.reward_now.tolist() == pytest.approx([0.05, 0.05, 0.05])
    assert fleet.reward_trained[0] == 0.08 and np.isnan(fleet.reward_trained[1])
    assert fleet.best_reward.tolist() == pytest.approx([0.06, 0.05, 0.05])
    assert fleet.rows_since[2] == int(2000 * 10)  # ten days of traffic since its data ended

    config = scheduler_config(yaml.safe_load((ROOT / "examples" / "training" / "policies.yaml").read_text()))
    p = plan(fleet, config.policies(), NOW, grouping=config.grouping_rules())
    assert [live[i].entity for i in p.order] == ["decayed", "old"]  # due and decaying first; fresh is not due
    records = job_records(p, fleet, live, NOW, busy=set())
    assert len(records) == 1 and [m["entity"] for m in records[0]["members"]] == ["decayed", "old"]
    assert records[0]["members"][0]["reasons"] == ["reward_drop"] and records[0]["feature_set"] == "clicks"
    assert job_records(p, fleet, live, NOW, busy={("decayed", "gbdt"), ("old", "gbdt")}) == []


def test_a_job_is_open_until_an_attempt_succeeds_or_it_gives_up() -> None:
    jobs = [{"job_id": "j1", "attempt": 1}, {"job_id": "j1", "attempt": 2}, {"job_id": "j2", "attempt": 1},
            {"job_id": "j3", "attempt": 1}]
    results = [{"job_id": "j1", "status": "FAILED"}, {"job_id": "j2", "status": "SUCCEEDED"},
               {"job_id": "j3", "status": "GAVE_UP"}]
    assert {k: j["attempt"] for k, j in open_jobs(jobs, results).items()} == {"j1": 2}


def test_a_policies_file_with_a_bad_field_is_refused_by_name() -> None:
    with pytest.raises(SchedulerInputError, match=r"model_types.gbdt.every_days: Input should be greater than 0"):
        scheduler_config({"model_types": {"gbdt": {"every_days": 0}}})
    with pytest.raises(SchedulerInputError, match=r"model_types.gbdt.evry_days: Extra inputs"):
        scheduler_config({"model_types": {"gbdt": {"evry_days": 3}}})


def test_entry_points_are_a_callable_or_a_command() -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    job = {"job_id": "j", "model_type": "gbdt", "members": [{"entity": "a", "rows": 5}], "attempt": 1}
    assert run_entry("training_support:fit", job)["models"][0]["entity"] == "a"
    echoed = run_entry(f"command:{sys.executable} -c 'import json,sys; j=json.load(sys.stdin); print(json.dumps(j))'", job)
    assert echoed == job
    with pytest.raises(TrainerError, match="exited with 3: no data"):
        run_entry(f"command:{sys.executable} -c 'import sys; print(\"no data\", file=sys.stderr); sys.exit(3)'", job)
    with pytest.raises(TrainerError, match="neither module:function nor command:"):
        resolve("just-a-name")
    with pytest.raises(TrainerError, match="cannot be loaded"):
        resolve("training_support:nope")
