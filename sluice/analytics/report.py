"""`sluice report`: one self-contained HTML file about an experiment, read from ClickHouse.

Per entity: traffic and weights over (event) time, the windowed reward rate of every arm
with 95 % intervals, P(best) over time (exact Thompson probabilities of the windowed
statistics of each weight table), an estimated cumulative regret against each day's best
arm next to an equal split, the statistics table of the latest window (tests, intervals,
P(best), SRM, naive and propensity-weighted means) and the decision with its reason.
Plots are PNGs inlined as base64: the file needs nothing else to open.

The weight tables are the worker's (table `weights`); the hourly rewards behind regret and
the propensity-weighted means are attributed by the worker's rules with the experiment's
spec (`sluice.analytics.attribution`), so both tell the same story.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sluice.analytics.attribution import experiment_spec, hourly
from sluice.analytics.offline import latest_evaluations
from sluice.core.decisions import DecisionCriteria, decide
from sluice.core.ipw import ipw_means
from sluice.core.stats.comparison import ArmData
from sluice.core.stats.intervals import wilson_interval
from sluice.core.thompson import beta_best_probabilities
from sluice.errors import SluiceError

DAY_MS = 86_400_000
MAX_POINTS = 150  # P(best) is computed for at most this many tables per entity


class ReportError(SluiceError):
    """Nothing to report (unknown experiment, no tables), named in the message."""


@dataclass
class EntityData:
    entity: str
    arms: list[str]
    times: np.ndarray  # window_end of each table, ms, shape (T,)
    weights: np.ndarray  # (T, K)
    count: np.ndarray  # (T, K) windowed observations
    sums: np.ndarray  # (T, K)
    sums_sq: np.ndarray  # (T, K)
    window_days: float  # the spec's
    # Attributed per hour of the serve: "hours" (H,) ms; "serves", "count" (in-experiment serves),
    # "sums", "sums_sq" (H, K), arms in the order of `arms`.
    hourly: dict[str, np.ndarray]
    # In-experiment serves grouped by (arm, logged propensity): "weights", "count", "sums",
    # "sums_sq" (G, K), one row per group with only its arm's column filled: the IPW input.
    by_propensity: dict[str, np.ndarray]


def load(client: Any, experiment: str, database: str = "sluice") -> list[EntityData]:
    """Per entity, the worker's weight tables and the hourly counters attributed by the rules
    of the experiment's spec. Raises ReportError when there are no tables, AttributionError
    when ClickHouse has no spec."""
    tables = client.query(
        f"SELECT entity, version, toUnixTimestamp64Milli(window_end), toUnixTimestamp64Milli(window_start), arm, "
        f"weight, count, sum, sum_squares FROM {database}.weights WHERE experiment_id = %(e)s "
        f"ORDER BY entity, version, arm", parameters={"e": experiment}).result_rows
    if not tables:
        known = [r[0] for r in client.query(f"SELECT DISTINCT experiment_id FROM {database}.weights").result_rows]
        raise ReportError(f"no weight tables of experiment {experiment!r} in {database}.weights "
                          f"(experiments there: {', '.join(sorted(known)) or 'none'})")
    spec = experiment_spec(client, experiment, database)
    table_arms: dict[str, dict[str, None]] = {}
    for r in tables:
        table_arms.setdefault(r[0], {})[r[4]] = None  # in order of first appearance
    attributed = hourly(client, experiment, database, arms={e: list(a) for e, a in table_arms.items()})
    groups = client.query(
        f"SELECT entity, arm, propensity, count(), sum(reward), sum(reward * reward) "
        f"FROM {database}.attributed_serves(experiment = {{e:String}}) WHERE in_experiment "
        f"GROUP BY entity, arm, propensity", parameters={"e": experiment}).result_rows
    out = []
    for entity in sorted(table_arms):
        rows = [r for r in tables if r[0] == entity]
        h = attributed.get(entity)
        arms = list(table_arms[entity]) if h is None else list(h.arms)
        versions = sorted({r[1] for r in rows})
        vi, ai = {v: i for i, v in enumerate(versions)}, {a: i for i, a in enumerate(arms)}
        shape = (len(versions), len(arms))
        times = np.zeros(len(versions))
        weights, count, sums, sums_sq = (np.zeros(shape) for _ in range(4))
        for _, version, end, _start, arm, weight, n, s, ss in rows:
            t, a = vi[version], ai[arm]
            times[t] = end
            weights[t, a], count[t, a], sums[t, a], sums_sq[t, a] = weight, n, s, ss
        if h is None:
            empty = np.zeros((0, len(arms)))
            hs = {"hours": np.zeros(0), "serves": empty, "count": empty, "sums": empty, "sums_sq": empty}
        else:
            hs = {"hours": h.hours, "serves": h.serves, "count": h.count, "sums": h.sum, "sums_sq": h.sum_sq}
        mine = [g for g in groups if g[0] == entity and g[1] in ai]
        by_p = {name: np.zeros((len(mine), len(arms))) for name in ("weights", "count", "sums", "sums_sq")}
        by_p["weights"][:] = 1.0  # the other arms' columns are empty groups
        for row, (_, arm, propensity, n, s, ss) in enumerate(mine):
            a = ai[arm]
            by_p["weights"][row, a], by_p["count"][row, a], by_p["sums"][row, a], by_p["sums_sq"][row, a] = \
                propensity, n, s, ss
        out.append(EntityData(entity, arms, times, weights, count, sums, sums_sq, spec.window_days, hs, by_p))
    return out


def period_regret(hours_ms: np.ndarray, count: np.ndarray, sums: np.ndarray,
                  period_ms: float = DAY_MS) -> tuple[np.ndarray, np.ndarray]:
    """Estimated cumulative regret after each hour, of the traffic as served and of an equal
    split of the same traffic, each period against the arm that is best in that period.

    `hours_ms` (H,) ascending; `count`, `sums` (H, K): observations and reward sums per hour
    and arm. Periods are `period_ms` long from the first hour. In each, an arm's gap is the
    best mean of the period minus its own (arms without observations in it have none); the
    equal split spreads the period's traffic over the arms observed in it. A change of best
    arm then costs only the hours the traffic stays on the old one.
    """
    hours_ms, count, sums = np.asarray(hours_ms, float), np.asarray(count, float), np.asarray(sums, float)
    if not len(hours_ms):
        return np.zeros(0), np.zeros(0)
    periods = ((hours_ms - hours_ms[0]) // period_ms).astype(int)
    policy, equal = np.zeros(len(hours_ms)), np.zeros(len(hours_ms))
    for p in np.unique(periods):
        rows = periods == p
        n, s = count[rows].sum(0), sums[rows].sum(0)
        seen = n > 0
        if not seen.any():
            continue
        means = np.divide(s, n, out=np.zeros_like(s), where=seen)
        gap = np.where(seen, means[seen].max() - means, 0.0)
        policy[rows] = count[rows] @ gap
        equal[rows] = count[rows].sum(1) * gap[seen].mean()
    return np.cumsum(policy), np.cumsum(equal)


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _days(ms: np.ndarray, origin: float) -> np.ndarray:
    return (ms - origin) / DAY_MS


def _plots(d: EntityData, origin: float, binary: bool) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = _days(d.times, origin)
    plots = {}
    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    ax.stackplot(x, d.weights.T, labels=d.arms, alpha=0.85)
    ax.set(title="traffic split (weights)", xlabel="day (event time)", ylabel="weight", ylim=(0, 1))
    ax.legend(fontsize=7, loc="upper left")
    plots["weights"] = _png(fig)

    # A table can hold rewards of serves the worker has not read yet (rewards and serves come
    # on two topics): for a binary reward, successes are capped at the serves, as the
    # worker's posterior caps them (`sluice.core.posteriors.beta_posterior`).
    sums = np.minimum(d.sums, d.count) if binary else d.sums
    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    for a, arm in enumerate(d.arms):
        n = d.count[:, a]
        ok = n > 0
        mean = np.divide(sums[:, a], n, out=np.zeros_like(n), where=ok)
        if binary:
            interval = wilson_interval(sums[ok, a], n[ok], 0.95)
            lo, hi = interval.lower, interval.upper
        else:
            var = np.divide(d.sums_sq[:, a], n, out=np.zeros_like(n), where=ok) - mean ** 2
            half = 1.96 * np.sqrt(np.maximum(var[ok], 0) / n[ok])
            lo, hi = mean[ok] - half, mean[ok] + half
        ax.plot(x[ok], mean[ok], label=arm)
        ax.fill_between(x[ok], lo, hi, alpha=0.2)
    ax.set(title="reward per serve over the window, 95 % interval", xlabel="day (event time)", ylabel="reward rate")
    ax.legend(fontsize=7)
    plots["reward"] = _png(fig)

    idx = np.unique(np.linspace(0, len(x) - 1, min(MAX_POINTS, len(x))).astype(int))
    if binary:
        p_best = np.array([beta_best_probabilities(1 + sums[i], 1 + d.count[i] - sums[i]) for i in idx])
        fig, ax = plt.subplots(figsize=(6.4, 3.2))
        for a, arm in enumerate(d.arms):
            ax.plot(x[idx], p_best[:, a], label=arm)
        ax.set(title="P(best) of each arm (exact Thompson, windowed)", xlabel="day (event time)", ylabel="P(best)",
               ylim=(0, 1))
        ax.legend(fontsize=7)
        plots["p_best"] = _png(fig)

    if d.hourly["count"].size:
        regret, equal = period_regret(d.hourly["hours"], d.hourly["count"], d.hourly["sums"])
        fig, ax = plt.subplots(figsize=(6.4, 3.2))
        hx = _days(d.hourly["hours"], origin)
        ax.plot(hx, regret, label="this experiment")
        ax.plot(hx, equal, "--", label="equal split, same traffic")
        ax.set(title="estimated cumulative regret vs each day's best arm", xlabel="day (event time)",
               ylabel="reward lost")
        ax.legend(fontsize=7)
        plots["regret"] = _png(fig)
    return plots


def _fmt(x: float, pct: bool = False) -> str:
    if x is None or not np.isfinite(x):
        return "–"
    return f"{x:.2%}" if pct else f"{x:.4g}"


def _statistics(d: EntityData, binary: bool, criteria: DecisionCriteria) -> tuple[str, str]:
    """The statistics table and the decision of the latest window, as HTML."""
    n, s, ss = d.count[-1], d.sums[-1], d.sums_sq[-1]
    if (n < 1).any():
        return "<p>Not every arm has observations in the latest window yet.</p>", ""
    data = ArmData(n=n, successes=s, names=tuple(d.arms)) if binary else \
        ArmData(n=n, sums=s, sums_sq=ss, names=tuple(d.arms))
    days_running = (d.times[-1] - d.times[0]) / DAY_MS
    decision = decide(data, criteria, days_in_window=min(d.window_days, days_running + 1 / 24),
                      days_running=days_running, current_weights=d.weights[-1])
    # Each serve weighted by the exact propensity it was logged with (Horvitz-Thompson),
    # whatever weight tables came and went while it was served.
    g = d.by_propensity
    ipw = None
    if g["count"].sum() >= 2:
        ipw = ipw_means(g["weights"], g["count"], g["sums"], g["sums_sq"])
    rows = []
    comp = decision.comparison
    for a, arm in enumerate(d.arms):
        summary = comp.arms[a] if comp is not None else None
        contrast = next((c for c in comp.contrasts if c.name == arm), None) if comp is not None else None
        cells = [arm, f"{int(n[a]):,}", _fmt(s[a] / n[a], binary),
                 "–" if summary is None else f"[{_fmt(summary.lower, binary)}, {_fmt(summary.upper, binary)}]",
                 "–" if summary is None else _fmt(summary.p_best, True),
                 "control" if contrast is None else _fmt(contrast.relative_uplift, True),
                 "–" if contrast is None else _fmt(contrast.p_holm),
                 "–" if ipw is None else _fmt(ipw.naive_mean[a], binary),
                 "–" if ipw is None else f"{_fmt(ipw.ipw_mean[a], binary)} [{_fmt(ipw.ipw_lower[a], binary)}, "
                                         f"{_fmt(ipw.ipw_upper[a], binary)}]",
                 _fmt(d.weights[-1, a], True)]
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    head = ["arm", "observations", "mean", "95 % interval", "P(best)", "uplift vs control", "p (Holm)",
            "naive mean (all hours)", "IPW mean [95 %]", "weight now"]
    table = ("<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>" + "".join(rows) + "</table>")
    srm = decision.srm
    srm_text = "" if srm is None else f" SRM p = {_fmt(srm.p_value)}."
    verdict = (f"<p class='decision'><b>{decision.verdict.value.upper()}</b> ({decision.rule.value}): "
               f"{html.escape(decision.reason)}{srm_text}</p>")
    return table, verdict


def _offline(rows: list[dict[str, Any]], binary: bool) -> tuple[str, str | None]:
    """The entity's latest continuous offline evaluation: a table of every (target,
    estimator) with its interval and diagnostics, and a plot of the estimates with their
    intervals. Empty when none was run."""
    if not rows:
        return "", None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    days = (rows[0]["window_end_ms"] - rows[0]["window_start_ms"]) / DAY_MS
    cells = []
    for r in rows:
        cells.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in (
            r["target"], r["estimator"], _fmt(r["estimate"], binary),
            f"[{_fmt(r['lower'], binary)}, {_fmt(r['upper'], binary)}]", f"{r['effective_sample_size']:,.0f}",
            _fmt(r["support_deficit"], True), f"{int(r['n_rounds']):,}")) + "</tr>")
    head = ["target policy", "estimator", "estimated reward", "95 % interval", "effective sample size",
            "support deficit", "logged rounds"]
    table = (f"<h3>Offline evaluation of candidate policies (last {days:g} days of logs)</h3>"
             "<p>What each policy would have earned on the traffic the live policy served, from the logged "
             "propensities (sluice.core.ope).</p><table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"
             + "".join(cells) + "</table>")
    targets = list(dict.fromkeys(r["target"] for r in rows))
    estimators = list(dict.fromkeys(r["estimator"] for r in rows))
    fig, ax = plt.subplots(figsize=(6.4, 0.5 + 0.45 * len(targets)))
    for k, est in enumerate(estimators):
        mine = {r["target"]: r for r in rows if r["estimator"] == est}
        y = np.arange(len(targets)) + (k - (len(estimators) - 1) / 2) * 0.2
        est_values = np.array([mine[t]["estimate"] if t in mine else np.nan for t in targets])
        lo = np.array([mine[t]["lower"] if t in mine else np.nan for t in targets])
        hi = np.array([mine[t]["upper"] if t in mine else np.nan for t in targets])
        ax.errorbar(est_values, y, xerr=[est_values - lo, hi - est_values], fmt="o", capsize=3, label=est)
    ax.set_yticks(np.arange(len(targets)), targets, fontsize=8)
    ax.set(title="offline estimates with 95 % intervals", xlabel="estimated reward per serve")
    ax.legend(fontsize=7)
    return table, _png(fig)


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }
.grid { display: grid; grid-template-columns: repeat(2, minmax(0, 1fr)); gap: 1em; }
.grid img { width: 100%; border: 1px solid #eee; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
td, th { border: 1px solid #ddd; padding: 0.3em 0.6em; text-align: right; }
td:first-child, th:first-child { text-align: left; }
.decision { background: #f4f7fb; padding: 0.6em 1em; border-left: 4px solid #3b6ea5; }
"""


def write_report(client: Any, experiment: str, out: Path, *, database: str = "sluice",
                 criteria: DecisionCriteria | None = None, progress: Callable[[str], None] | None = None) -> Path:
    """Write the report of `experiment` to `out`; returns the path. The reward's kind, the
    attribution rules and (unless `criteria` is given) the decision criteria are the spec's."""
    entities = load(client, experiment, database)  # first: it names an experiment without tables
    spec = experiment_spec(client, experiment, database)
    offline = latest_evaluations(client, experiment, database)
    criteria = criteria or spec.criteria
    origin = min(float(d.times[0]) for d in entities)
    binary = spec.reward.type == "binary"
    sections = []
    overview = []
    for d in entities:
        if progress is not None:
            progress(d.entity)
        plots = _plots(d, origin, binary)
        table, verdict = _statistics(d, binary, criteria)
        offline_table, offline_plot = _offline([r for r in offline if r["entity"] == d.entity], binary)
        if offline_plot is not None:
            plots["offline estimates"] = offline_plot
        images = "".join(f"<img alt='{k}' src='data:image/png;base64,{v}'>" for k, v in plots.items())
        best = d.arms[int(np.argmax(d.weights[-1]))]
        overview.append(f"<tr><td>{html.escape(d.entity)}</td><td>{len(d.times):,}</td><td>{html.escape(best)}</td>"
                        f"<td>{_fmt(d.weights[-1].max(), True)}</td><td>{int(d.count[-1].sum()):,}</td></tr>")
        sections.append(f"<h2>{html.escape(d.entity or '(no entity)')}</h2>{verdict}{table}{offline_table}"
                        f"<div class='grid'>{images}</div>")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Sluice report: {html.escape(experiment)}</title>
<style>{STYLE}</style></head><body>
<h1>Experiment {html.escape(experiment)}</h1>
<p>{len(entities)} entities; reward <code>{html.escape(spec.reward.name)}</code> ({spec.reward.type}), attributed
within {spec.reward.attribution_window_hours:g} h of its serve; window {spec.window_days:g} days (spec version
{spec.spec_version}). Time axis: event time in days since the first table. Source: ClickHouse database
<code>{html.escape(database)}</code>.</p>
<h2>Overall</h2><table><tr><th>entity</th><th>tables</th><th>heaviest arm now</th><th>its weight</th>
<th>observations in window</th></tr>{''.join(overview)}</table>
{''.join(sections)}
</body></html>"""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out
