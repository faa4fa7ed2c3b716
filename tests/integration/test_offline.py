"""Offline evaluation on an experiment's log in ClickHouse: `sluice evaluate`'s path reads
the serves with their exact propensities and the rewards the worker's rules attribute, the
continuous job writes a row per (entity, target, estimator), and the report shows them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sluice.analytics.offline import (
    evaluate_experiment_log,
    latest_evaluations,
    read_log_clickhouse,
    run_continuous,
)
from sluice.analytics.report import write_report
from tests.integration.test_report import RATES, seeded  # noqa: F401 - the seeded experiment

pytestmark = pytest.mark.integration


def test_an_entitys_log_is_evaluated_with_the_logged_propensities(seeded) -> None:  # noqa: F811
    client, db = seeded
    source = read_log_clickhouse(client, "exp", "e1", database=db, days=7)
    assert source.logged.arms == ["control", "better"] and source.logged.n_rounds == 48 * 200
    assert set(source.published) == {"control", "better"}
    rows = evaluate_experiment_log(source, ["always:better", "always:control", "live"], ["ips", "snips", "dr"],
                                   n_bootstrap=300)
    by = {(r["target"], r["estimator"]): r for r in rows}
    # Each arm alone: the true click rates (3 % and 6 %) inside the intervals; seeded, so fixed.
    for arm, rate in RATES.items():
        for est in ("ips", "snips", "dr"):
            row = by[(f"always:{arm}", est)]
            assert row["lower"] <= rate <= row["upper"], row
    assert by[("always:better", "snips")]["estimate"] > by[("always:control", "snips")]["estimate"]
    assert by[("live", "dr")]["support_deficit"] == 0.0 and by[("live", "dr")]["effective_sample_size"] > 1_000


def test_the_continuous_job_writes_rows_that_the_report_shows(seeded, tmp_path: Path) -> None:  # noqa: F811
    client, db = seeded
    written = run_continuous(client, db, now_ms=1_900_000_000_000, n_bootstrap=200)
    rows = latest_evaluations(client, "exp", db)
    # 2 entities × (equal, each of 2 arms alone, live) × (ips, snips, dr), as the spec's defaults say.
    assert written == len(rows) == 2 * 4 * 3
    assert {r["target"] for r in rows} == {"equal", "always:control", "always:better", "live"}
    page = write_report(client, "exp", tmp_path / "r.html", database=db).read_text()
    assert "Offline evaluation of candidate policies" in page
    e1 = next(r for r in rows if r["entity"] == "e1" and r["target"] == "always:better" and r["estimator"] == "snips")
    assert f"{e1['estimate']:.2%}" in page
    assert len(re.findall(r"<img alt='offline estimates'", page)) == 2
