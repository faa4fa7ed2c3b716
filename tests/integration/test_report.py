"""`sluice report`: the HTML holds the numbers the core computes from the seeded tables, and
renders in headless Chromium as plots, not a blank page."""

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

pytestmark = pytest.mark.integration
DAY_MS, HOUR_MS = 86_400_000, 3_600_000
ARMS = ["control", "better"]
RATES = {"control": 0.03, "better": 0.06}


def seed(client, db: str, experiment: str = "exp") -> None:
    """Two days of an A/B-like experiment for two entities: serves, rewards and a weight
    table every hour carrying the windowed statistics, as the sink would have written."""
    from datetime import datetime, timezone

    rng = np.random.default_rng(5)
    start = int(time.time() * 1000) - 2 * DAY_MS
    serves, rewards, weights = [], [], []
    for entity in ("e1", "e2"):
        n, s = dict.fromkeys(ARMS, 0), dict.fromkeys(ARMS, 0)
        for hour in range(48):
            share = min(0.9, 0.5 + hour / 100)
            for i in range(200):
                arm = "better" if rng.random() < share else "control"
                ts = start + hour * HOUR_MS + i * 1000
                sid = str(uuid.uuid4())
                p = share if arm == "better" else 1 - share
                serves.append([sid, sid, experiment, entity, f"u{i}", arm, True, p, hour + 1, 0,
                               datetime.fromtimestamp(ts / 1000, timezone.utc), {}])
                n[arm] += 1
                if rng.random() < RATES[arm]:
                    s[arm] += 1
                    rewards.append([str(uuid.uuid4()), sid, experiment, entity, "click", 1.0, None, None,
                                    datetime.fromtimestamp((ts + 60_000) / 1000, timezone.utc)])
            end = datetime.fromtimestamp((start + (hour + 1) * HOUR_MS) / 1000, timezone.utc)
            for arm in ARMS:
                w = share if arm == "better" else 1 - share
                weights.append([str(uuid.uuid4()), experiment, entity, hour + 1, arm, w, int(w * 10000), "thompson",
                                "test", n[arm], n[arm], float(s[arm]), float(s[arm]),
                                datetime.fromtimestamp(start / 1000, timezone.utc), end, end])
    client.insert(f"{db}.serves", serves, column_names=["event_id", "serve_id", "experiment_id", "entity", "unit_id", "arm",
                                                        "in_experiment", "propensity", "weights_version", "bucket",
                                                        "timestamp", "context"])
    client.insert(f"{db}.rewards", rewards, column_names=["event_id", "serve_id", "experiment_id", "entity", "name",
                                                          "value", "latency_ms", "error", "timestamp"])
    client.insert(f"{db}.weights", weights, column_names=["event_id", "experiment_id", "entity", "version", "arm",
                                                          "weight", "buckets", "policy", "reason", "serves", "count",
                                                          "sum", "sum_squares", "window_start", "window_end",
                                                          "computed_at"])


@pytest.fixture
def seeded(clickhouse, database):
    migrate(clickhouse, database=database)
    seed(clickhouse, database)
    return clickhouse, database


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
