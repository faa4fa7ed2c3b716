"""`sluice report`: the HTML holds the numbers the core computes from the seeded tables, its
attributed rewards follow the worker's rules with the experiment's spec, and it renders in
headless Chromium as plots, not a blank page."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from sluice.analytics.report import ReportError, load, write_report
from sluice.clickhouse import migrate
from sluice.core.stats.comparison import ArmData, compare
from tests.analytics_support import land_spec, spec, token

pytestmark = pytest.mark.integration
DAY_MS, HOUR_MS = 86_400_000, 3_600_000
ARMS = ["control", "better"]
RATES = {"control": 0.03, "better": 0.06}


ATTRIBUTION_HOURS = 2.0


def seed(client, db: str, experiment: str = "exp") -> dict[str, dict[str, int]]:
    """Two days of an A/B-like experiment for two entities: its spec (a click counts within
    2 h), serves, rewards and a weight table every hour carrying the windowed statistics, as
    the sink would have written. Some clicked serves are clicked twice, some serves get a
    `view` or a click 3 h late, which count nothing. Returns entity → arm → clicked serves."""
    from datetime import datetime, timezone

    rng = np.random.default_rng(5)
    start = int(time.time() * 1000) - 2 * DAY_MS
    land_spec(client, db, spec(experiment, ARMS, attribution_hours=ATTRIBUTION_HOURS))
    serves, rewards, weights = [], [], []
    clicked = {}

    def at(ms: int) -> datetime:
        return datetime.fromtimestamp(ms / 1000, timezone.utc)

    for entity in ("e1", "e2"):
        n, s = dict.fromkeys(ARMS, 0), dict.fromkeys(ARMS, 0)
        for hour in range(48):
            share = min(0.9, 0.5 + hour / 100)
            for i in range(200):
                arm = "better" if rng.random() < share else "control"
                ts = start + hour * HOUR_MS + i * 1000
                sid = token(len(serves), at(ts), arm)
                p = share if arm == "better" else 1 - share
                serves.append([str(uuid.uuid4()), sid, experiment, entity, f"u{i}", arm, True, p, hour + 1, 0,
                               at(ts), {}])
                n[arm] += 1
                if rng.random() < RATES[arm]:
                    s[arm] += 1
                    for _ in range(1 + int(rng.random() < 0.3)):  # a second click counts nothing
                        rewards.append([str(uuid.uuid4()), sid, experiment, entity, "click", 1.0, None, None,
                                        at(ts + 60_000)])
                elif rng.random() < 0.05:  # late for the spec's 2 h, or another name: nothing
                    late = rng.random() < 0.5
                    rewards.append([str(uuid.uuid4()), sid, experiment, entity, "click" if late else "view", 1.0,
                                    None, None, at(ts + (3 * HOUR_MS if late else 60_000))])
            end = datetime.fromtimestamp((start + (hour + 1) * HOUR_MS) / 1000, timezone.utc)
            for arm in ARMS:
                w = share if arm == "better" else 1 - share
                weights.append([str(uuid.uuid4()), experiment, entity, hour + 1, arm, w, int(w * 10000), "thompson",
                                "test", n[arm], n[arm], float(s[arm]), float(s[arm]),
                                datetime.fromtimestamp(start / 1000, timezone.utc), end, end])
        clicked[entity] = s
    client.insert(f"{db}.serves", serves, column_names=["event_id", "serve_id", "experiment_id", "entity", "unit_id", "arm",
                                                        "in_experiment", "propensity", "weights_version", "bucket",
                                                        "timestamp", "context"])
    client.insert(f"{db}.rewards", rewards, column_names=["event_id", "serve_id", "experiment_id", "entity", "name",
                                                          "value", "latency_ms", "error", "timestamp"])
    client.insert(f"{db}.weights", weights, column_names=["event_id", "experiment_id", "entity", "version", "arm",
                                                          "weight", "buckets", "policy", "reason", "serves", "count",
                                                          "sum", "sum_squares", "window_start", "window_end",
                                                          "computed_at"])
    return clicked


@pytest.fixture
def seeded(clickhouse, database):
    migrate(clickhouse, database=database)
    seed(clickhouse, database)
    return clickhouse, database


def test_rewards_are_attributed_by_the_spec_s_rules(clickhouse, database, tmp_path: Path) -> None:
    """A click counts once per serve, within the spec's 2 h, by its name: the attributed
    totals are the clicked serves (which the seeded tables carry too)."""
    client, db = clickhouse, database
    migrate(client, database=db)
    clicked = seed(client, db)
    for d in load(client, "exp", db):
        totals = dict(zip(d.arms, d.hourly["sums"].sum(0)))
        assert totals == {arm: float(v) for arm, v in clicked[d.entity].items()}, d.entity
        assert np.array_equal(d.hourly["sums"], d.hourly["sums_sq"])  # binary
        assert dict(zip(d.arms, d.hourly["count"].sum(0))) == dict(zip(d.arms, d.count[-1]))
        assert d.window_days == 7.0
    page = write_report(client, "exp", tmp_path / "r.html", database=db).read_text()
    assert re.search(r"attributed\s+within 2 h of its serve", page) and "(binary)" in page


def test_the_report_holds_the_statistics_of_the_core(seeded, tmp_path: Path) -> None:
    client, db = seeded
    out = write_report(client, "exp", tmp_path / "r.html", database=db)
    page = out.read_text()
    assert "<h2>e1</h2>" in page and "<h2>e2</h2>" in page
    assert page.count("data:image/png;base64,") == 8  # four plots per entity
    assert "http://" not in page and "https://" not in page  # self-contained
    for d in load(client, "exp", db):
        data = ArmData(n=d.count[-1], successes=d.sums[-1], names=tuple(d.arms))
        comparison = compare(data)
        for arm in comparison.arms:
            assert f"{arm.p_best:.2%}" in page, (d.entity, arm.name, arm.p_best)
            assert f"[{arm.lower:.2%}, {arm.upper:.2%}]" in page
    assert re.search(r"<b>(SHIP|CONTINUE|ITERATE|KILL)</b>", page)


def test_an_unknown_experiment_is_named(seeded, tmp_path: Path) -> None:
    client, db = seeded
    with pytest.raises(ReportError, match="'nope'.*experiments there: exp"):
        write_report(client, "nope", tmp_path / "r.html", database=db)


def test_the_report_renders_as_plots_in_headless_chromium(seeded, tmp_path: Path) -> None:
    import matplotlib.image

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.fail("chromium is missing: `make tools` installs the Debian package chromium")
    client, db = seeded
    out = write_report(client, "exp", tmp_path / "r.html", database=db)
    shot = tmp_path / "shot.png"
    run = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                          "--window-size=1400,1800", f"--screenshot={shot}", out.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert shot.exists(), run.stderr[-2000:]
    pixels = matplotlib.image.imread(shot)[..., :3]
    ink = (pixels < 0.9).any(axis=2)
    assert ink.mean() > 0.08, f"only {ink.mean():.1%} of the page is not white"
    colourful = (pixels.max(axis=2) - pixels.min(axis=2)) > 0.3  # plot lines and areas, not black text
    assert colourful.mean() > 0.02, f"only {colourful.mean():.2%} of the page is in colour: no plots?"
