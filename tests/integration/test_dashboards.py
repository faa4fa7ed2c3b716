"""The Grafana dashboards: the committed JSON is what dashboards/build.py writes; every
ClickHouse query (panels and template variables), with the plugin's macros expanded, runs
against the real engine on seeded data and returns the columns its panel plots; every
PromQL expression passes promtool."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from sluice.clickhouse import migrate
from sluice.config import project_root

sys.path.insert(0, str(project_root() / "dashboards"))
sys.path.insert(0, str(project_root() / "tests"))
import build  # noqa: E402
from grafana_macros import expand  # noqa: E402
from integration.test_report import seed  # noqa: E402

pytestmark = pytest.mark.integration
DASHBOARDS = sorted((project_root() / "dashboards").glob("*.json"))


def test_the_committed_dashboards_are_what_the_builder_writes() -> None:
    assert {p.stem for p in DASHBOARDS} == set(build.DASHBOARDS)
    for path in DASHBOARDS:
        assert path.read_text() == build.render(path.stem), f"{path.name} is stale: run python dashboards/build.py"


@pytest.fixture(scope="module")
def seeded(clickhouse):
    db = f"t_{uuid.uuid4().hex[:12]}"
    migrate(clickhouse, database=db)
    seed(clickhouse, db)
    now = datetime.now(timezone.utc)
    serve = clickhouse.query(f"SELECT serve_id FROM {db}.serves WHERE entity = 'e1' LIMIT 1").result_rows[0][0]
    clickhouse.insert(f"{db}.rewards", [[str(uuid.uuid4()), serve, "exp", "e1", "latency", 1.0, 42.0, False,
                                         now - timedelta(hours=1)]],
                      column_names=["event_id", "serve_id", "experiment_id", "entity", "name", "value", "latency_ms",
                                    "error", "timestamp"])
    clickhouse.insert(f"{db}.decisions", [[str(uuid.uuid4()), "exp", "e1", "continue", None, "minimum_data",
                                           "not enough data yet", "{}", now]],
                      column_names=["event_id", "experiment_id", "entity", "verdict", "winner", "rule", "reason",
                                    "arm_actions", "timestamp"])
    for estimator, estimate in (("snips", 0.051), ("dr", 0.049)):  # a round of the sink's continuous evaluation
        clickhouse.insert(f"{db}.offline_evaluations",
                          [[now, "exp", "e1", 1, now - timedelta(days=7), now, "live", estimator, estimate,
                            estimate - 0.01, estimate + 0.01, "bootstrap", 850.0, 3.2, 0.0, 1000]],
                          column_names=["computed_at", "experiment_id", "entity", "spec_version", "window_start",
                                        "window_end", "target", "estimator", "estimate", "lower", "upper",
                                        "interval", "effective_sample_size", "max_weight", "support_deficit",
                                        "n_rounds"])
    return clickhouse, db


def run_sql(client, db: str, sql: str, variables: dict[str, str]):
    end = datetime.now(timezone.utc) + timedelta(minutes=1)
    expanded = expand(sql, end - timedelta(days=3), end, 3600, variables).replace("sluice.", f"{db}.")
    assert "$" not in expanded, f"unexpanded macro or variable in: {expanded}"
    return client.query(expanded)


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_every_clickhouse_query_runs_and_returns_what_its_panel_plots(seeded, path: Path) -> None:
    client, db = seeded
    board = json.loads(path.read_text())
    variables = {"experiment": "exp", "entity": "e1", "arm": ""}
    for var in board["templating"]["list"]:
        result = run_sql(client, db, var["query"], variables)
        assert result.result_rows, f"variable {var['name']} lists nothing"
    ch_panels = [p for p in board["panels"] if p["datasource"]["uid"] == "sluice-clickhouse"]
    assert ch_panels or path.stem == "health"
    for panel in ch_panels:
        for target in panel["targets"]:
            result = run_sql(client, db, target["rawSql"], variables)
            missing = set(panel["sluice"]["columns"]) - set(result.column_names)
            assert not missing, f"{path.stem} / {panel['title']}: no column(s) {sorted(missing)} in {result.column_names}"
            assert result.result_rows, f"{path.stem} / {panel['title']}: no rows on the seeded data"


def test_every_promql_expression_passes_promtool(tmp_path: Path) -> None:
    if shutil.which("promtool") is None:
        pytest.fail("promtool is missing: `make tools` installs the Debian package prometheus")
    exprs = [t["expr"] for path in DASHBOARDS for p in json.loads(path.read_text())["panels"]
             if p["datasource"]["uid"] == "sluice-prometheus" for t in p["targets"]]
    assert len(exprs) >= 8
    rules = {"groups": [{"name": "dashboards", "rules": [{"record": f"sluice:dashboard_expr_{i}", "expr": e}
                                                         for i, e in enumerate(exprs)]}]}
    (tmp_path / "exprs.yml").write_text(yaml.safe_dump(rules))
    run = subprocess.run(["promtool", "check", "rules", str(tmp_path / "exprs.yml")], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
