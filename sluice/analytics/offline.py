"""Offline evaluation of logged serves: read a log, name the targets, run the estimators.

The arithmetic is `sluice.core.ope` (Open Bandit Pipeline's estimators and conventions);
this module turns what a user has into its arrays: a parquet or CSV file whose columns are
mapped by role (`action`, `reward`, `pscore`, `position`, `timestamp`, context features),
or an experiment's serves in ClickHouse with their attributed rewards (see
`sluice.analytics.attribution`); and target descriptions into `action_dist` arrays.

Targets (`build_target`):

| text | target |
| --- | --- |
| `equal` | an equal split over the arms |
| `always:ARM` | always ARM |
| `split:a=0.7,b=0.3` | a static split (unnamed arms get 0) |
| `policy:NAME` or `policy:NAME:{json params}` | a Sluice policy replayed over the log in order |
| `current:NAME[:{json}]` | that policy's current distribution, from the whole log |
| `live` | the experiment's own policy, replayed (needs its spec), with the arms the last published table holds at 0 left out |
| `published` | the last published weights (needs them) |
| `file:PATH.npy` | probabilities from a file, (n_rounds, n_actions, len_list) or (n_actions, len_list) |
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from sluice.core import ope
from sluice.errors import SluiceError

ROLES = ("action", "reward", "pscore", "position", "timestamp")
ESTIMATORS: dict[str, ope.Estimator] = {
    "ips": ope.IPS(), "snips": ope.SNIPS(), "dm": ope.DM(), "dr": ope.DR(), "switch-dr": ope.SwitchDR(),
    "replay": ope.Replay("propensity"),
}
DEFAULT_ESTIMATORS = ("ips", "snips", "dr")


class OfflineError(SluiceError):
    """A log or target that cannot be evaluated; the message names what and why."""


@dataclass(frozen=True)
class Logged:
    """A log in arrays, in time order. `arms[i]` names action i."""

    arms: list[str]
    action: NDArray[np.int64]
    reward: NDArray[np.float64]
    pscore: NDArray[np.float64]
    position: NDArray[np.int64]
    context: NDArray[np.float64] | None = None
    timestamp: NDArray[np.int64] | None = None
    source: str = ""

    @property
    def n_rounds(self) -> int:
        return int(self.action.size)

    @property
    def len_list(self) -> int:
        return int(self.position.max()) + 1 if self.position.size else 1

    def bandit_log(self) -> ope.BanditLog:
        return ope.BanditLog.of(self.action, self.reward, self.pscore, len(self.arms), self.position, self.len_list,
                                self.context)


def read_log_file(path: Path, columns: Mapping[str, str] | None = None, context: Sequence[str] = (),
                  arms: Sequence[str] | None = None) -> Logged:
    """A parquet or CSV file as a log. `columns` maps a role to the file's column (roles
    default to columns of their own name; `position` and `timestamp` are optional). Actions
    may be names or integer ids; `arms` fixes their order (default: sorted names, or ids 0…max).
    Positions are ranked densely from 0 (OBP's convention); rows are put in timestamp order
    when there is one."""
    import pyarrow.compute as pc

    columns = dict(columns or {})
    unknown = sorted(set(columns) - set(ROLES))
    if unknown:
        raise OfflineError(f"--column maps unknown role(s) {unknown}; the roles are {list(ROLES)}")
    table = _read_table(path)
    have = table.column_names

    def column(role: str, required: bool = True) -> Any:
        name = columns.get(role, role)
        if name not in have:
            if required or role in columns:
                raise OfflineError(f"{path}: no column {name!r} for {role} (columns: {', '.join(have)}); "
                                   f"map it with --column {role}=COLUMN")
            return None
        values = table.column(name)
        if values.null_count:
            raise OfflineError(f"{path}: column {name!r} ({role}) has {values.null_count} empty value(s)")
        return values

    raw_action = column("action").to_numpy(zero_copy_only=False)
    arm_names, action = _actions(raw_action, arms, path)
    reward = _floats(column("reward"), "reward", path)
    pscore = _floats(column("pscore"), "pscore", path)
    pos_col = column("position", required=False)
    position = np.zeros(action.size, dtype=np.int64)
    if pos_col is not None:
        position = np.unique(pos_col.to_numpy(zero_copy_only=False), return_inverse=True)[1].astype(np.int64)
    ts_col = column("timestamp", required=False)
    timestamp = None
    if ts_col is not None:
        timestamp = pc.cast(ts_col, "int64").to_numpy(zero_copy_only=False) if str(ts_col.type) != "int64" \
            else ts_col.to_numpy()
    features = None
    if context:
        missing = [c for c in context if c not in have]
        if missing:
            raise OfflineError(f"{path}: no context column(s) {missing} (columns: {', '.join(have)})")
        features = np.column_stack([_floats(table.column(c), c, path) for c in context])
    logged = Logged(arm_names, action, reward, pscore, position, features, timestamp, str(path))
    return in_time_order(logged)


def _read_table(path: Path) -> Any:
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if not path.exists():
        raise OfflineError(f"no file {path}")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            return pq.read_table(path)
        if path.suffix.lower() in (".csv", ".txt"):
            return pacsv.read_csv(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise OfflineError(f"{path} is not a readable {path.suffix[1:]} file: {exc}") from exc
    raise OfflineError(f"{path}: give a .parquet or .csv file")


def _floats(values: Any, role: str, path: Path) -> NDArray[np.float64]:
    try:
        return np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise OfflineError(f"{path}: {role} must be numbers ({exc})") from None


def _actions(raw: NDArray[Any], arms: Sequence[str] | None, path: Path) -> tuple[list[str], NDArray[np.int64]]:
    if raw.dtype.kind in "iu":
        ids = raw.astype(np.int64)
        if ids.size and ids.min() < 0:
            raise OfflineError(f"{path}: integer action ids must be >= 0, but {int(ids.min())} is given")
        names = list(arms) if arms else [str(i) for i in range(int(ids.max()) + 1 if ids.size else 0)]
        if ids.size and ids.max() >= len(names):
            raise OfflineError(f"{path}: action id {int(ids.max())} has no name among {len(names)} arms")
        return names, ids
    text = raw.astype(str)
    names = list(arms) if arms else sorted(set(text.tolist()))
    index = {name: i for i, name in enumerate(names)}
    unknown = sorted(set(text.tolist()) - set(index))
    if unknown:
        raise OfflineError(f"{path}: actions {unknown[:5]} are not among the arms {names}")
    return names, np.array([index[t] for t in text], dtype=np.int64)


def in_time_order(logged: Logged) -> Logged:
    if logged.timestamp is None:
        return logged
    order = np.argsort(logged.timestamp, kind="stable")
    return Logged(logged.arms, logged.action[order], logged.reward[order], logged.pscore[order],
                  logged.position[order], None if logged.context is None else logged.context[order],
                  logged.timestamp[order], logged.source)


@dataclass(frozen=True)
class Policy:
    """A Sluice policy as a target names it: `NAME` or `NAME:{json params}`."""

    name: str
    params: dict[str, Any]

    @classmethod
    def parse(cls, text: str) -> Policy:
        name, _, raw = text.partition(":")
        try:
            params = json.loads(raw) if raw else {}
        except json.JSONDecodeError as exc:
            raise OfflineError(f"policy {name!r}: parameters must be a JSON object, but {raw!r} is not JSON ({exc})") from None
        if not isinstance(params, dict):
            raise OfflineError(f"policy {name!r}: parameters must be a JSON object, but {raw!r} is given")
        return cls(name, params)


def build_target(text: str, logged: Logged, *, reward_type: str = "binary", live: Policy | None = None,
                 published: Mapping[str, float] | None = None, batch_size: int = 100) -> NDArray[np.float64]:
    """The target `text` names (see the module docstring) as an action_dist for `logged`."""
    n, k, slots = logged.n_rounds, len(logged.arms), logged.len_list
    kind, _, rest = text.partition(":")
    if kind == "equal":
        return ope.static_split_action_dist(np.ones(k), n, slots)
    if kind == "always":
        if rest not in logged.arms:
            raise OfflineError(f"target {text!r}: no arm {rest!r} (arms: {logged.arms})")
        return ope.always_arm_action_dist(logged.arms.index(rest), n, k, slots)
    if kind in ("split", "published"):
        shares = _shares(rest, logged, text) if kind == "split" else dict(published or {})
        if not shares:
            raise OfflineError(f"target {text!r}: no published weights are known for this log")
        return ope.static_split_action_dist([shares.get(a, 0.0) for a in logged.arms], n, slots)
    if kind in ("policy", "current", "live"):
        if kind == "live" and live is None:
            raise OfflineError("target 'live' needs the experiment's spec: evaluate an experiment's log from ClickHouse")
        policy = live if kind == "live" else Policy.parse(rest)
        assert policy is not None
        if kind == "current":
            return ope.current_policy_action_dist(policy.name, policy.params, logged.arms, logged.action, logged.reward,
                                                  n, len_list=slots, reward_type=reward_type)  # type: ignore[arg-type]
        dist = ope.replayed_policy_action_dist(policy.name, policy.params, logged.arms, logged.action, logged.reward,
                                               batch_size=batch_size, len_list=slots,
                                               reward_type=reward_type)  # type: ignore[arg-type]
        return _without_held(dist, logged.arms, published) if kind == "live" else dist
    if kind == "file":
        path = Path(rest)
        if not path.exists():
            raise OfflineError(f"target {text!r}: no file {path}")
        return ope.action_dist_from_probabilities(np.load(path), n, k, slots, source=str(path))
    raise OfflineError(f"target {text!r}: say equal, always:ARM, split:a=0.5,b=0.5, policy:NAME[:JSON], "
                       f"current:NAME[:JSON], live, published or file:PATH.npy")


def _without_held(dist: NDArray[np.float64], arms: Sequence[str],
                  published: Mapping[str, float] | None) -> NDArray[np.float64]:
    """The live policy as the worker serves it: arms the last published table holds at 0
    (rolled back, retired) get nothing and the rest share their mass, as the guardrails'
    kills do. Without this a replayed Thompson would hand a retired arm, which has no data in
    the window and so keeps its prior, most of the traffic."""
    held = np.array([published is not None and a in published and published[a] <= 0 for a in arms])
    if not held.any() or held.all():
        return dist
    kept = np.where(held[None, :, None], 0.0, dist)
    total = kept.sum(axis=1, keepdims=True)
    even = np.broadcast_to((~held / (~held).sum())[None, :, None], kept.shape)  # where all mass was on held arms
    return np.where(total > 0, kept / np.where(total > 0, total, 1.0), even)


def _shares(text: str, logged: Logged, target: str) -> dict[str, float]:
    shares = {}
    for part in filter(None, text.split(",")):
        arm, eq, value = part.partition("=")
        if not eq or arm not in logged.arms:
            raise OfflineError(f"target {target!r}: {part!r} is not ARM=SHARE with an arm of {logged.arms}")
        try:
            shares[arm] = float(value)
        except ValueError:
            raise OfflineError(f"target {target!r}: share {value!r} of {arm!r} is not a number") from None
    return shares


def evaluate_log(logged: Logged, targets: Mapping[str, NDArray[np.float64]], estimators: Sequence[str], *,
                 n_bootstrap: int = 1000, seed: int = 0, level: float = 0.95) -> list[dict[str, Any]]:
    """One row per (target, estimator): the estimate, its bootstrap interval (and the
    analytic one), and the diagnostics. The reward model for DM/DR is fitted once, cross-fitted.
    A target the log has no support for is left out with a warning (OfflineError if all are)."""
    unknown = [e for e in estimators if e not in ESTIMATORS]
    if unknown:
        raise OfflineError(f"unknown estimator(s) {unknown}; use {', '.join(ESTIMATORS)}")
    log = logged.bandit_log()
    chosen = [ESTIMATORS[e] for e in estimators]
    predictions = ope.fit_reward_model(log, rng=seed) if any(e.needs_reward_model for e in chosen) else None
    rows: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    for label, dist in targets.items():
        try:
            results = ope.evaluate(log, dist, chosen, predictions, n_bootstrap=n_bootstrap, level=level, rng=seed)
        except ope.OPEInputError as exc:
            # One target the log cannot speak for (an arm retired before the window began)
            # must not cost the others their estimates.
            logging.getLogger(__name__).warning("%s: target %s not evaluated: %s", logged.source or "log", label, exc)
            skipped[label] = str(exc)
            continue
        for name, result in results.items():
            boot = result.bootstrap or result.normal
            d = result.diagnostics
            rows.append({
                "target": label, "estimator": name, "estimate": result.estimate,
                "lower": boot.lower, "upper": boot.upper, "interval": boot.method,
                "normal_lower": result.normal.lower, "normal_upper": result.normal.upper,
                "effective_sample_size": d.effective_sample_size, "max_weight": d.max_importance_weight,
                "support_deficit": d.support_deficit, "n_rounds": logged.n_rounds,
            })
    if not rows:
        raise OfflineError("no target could be evaluated: " + "; ".join(f"{t}: {why}" for t, why in skipped.items()))
    return rows


# ---------------------------------------------------------------------------------------
# Logs in ClickHouse, and the continuous evaluation


@dataclass(frozen=True)
class ExperimentLog:
    """An entity's log from ClickHouse with what its targets need: the spec (for `live`),
    the weights it last published, and the window it covers (event time, ms)."""

    logged: Logged
    spec: Any  # ExperimentSpec
    published: dict[str, float]
    window_start_ms: int
    window_end_ms: int


def read_log_clickhouse(client: Any, experiment: str, entity: str, *, days: float | None = None,
                        database: str = "sluice") -> ExperimentLog:
    """The in-experiment serves of `entity` over the last `days` (default: the spec's
    offline-evaluation window) before its newest serve, with their rewards attributed by the
    worker's rules (`sluice.analytics.attribution`)."""
    from sluice.analytics.attribution import evaluation_log, experiment_spec

    spec = experiment_spec(client, experiment, database)
    span = spec.evaluation.window_days if days is None else days
    newest = client.query(
        f"SELECT max(toUnixTimestamp64Milli(timestamp)), count() FROM {database}.attributed_serves(experiment = {{e:String}}) "
        f"WHERE entity = {{entity:String}} AND in_experiment", parameters={"e": experiment, "entity": entity}).result_rows
    if not newest or not newest[0][1]:
        raise OfflineError(f"no in-experiment serves of experiment {experiment!r} for entity {entity!r} in ClickHouse")
    end = int(newest[0][0]) + 1
    start = end - round(span * 86_400_000)
    log = evaluation_log(client, experiment, entity, database, since_ms=start, until_ms=end)
    weights = client.query(
        f"SELECT arm, weight FROM {database}.weights WHERE experiment_id = {{e:String}} AND entity = {{entity:String}} "
        f"AND version = (SELECT max(version) FROM {database}.weights WHERE experiment_id = {{e:String}} "
        f"AND entity = {{entity:String}})", parameters={"e": experiment, "entity": entity}).result_rows
    logged = Logged(list(log.arms), log.action, log.reward, log.pscore, np.zeros(log.action.size, dtype=np.int64),
                    None, log.timestamp_ms, f"{database}: {experiment}/{entity}")
    return ExperimentLog(logged, spec, {a: float(w) for a, w in weights}, start, end)


def default_targets(arms: Sequence[str], *, live: bool) -> list[str]:
    """An equal split, each arm alone, and (with a spec) the live policy."""
    return ["equal", *(f"always:{a}" for a in arms), *(["live"] if live else [])]


def evaluate_experiment_log(source: ExperimentLog, targets: Sequence[str] | None = None,
                            estimators: Sequence[str] | None = None, *, n_bootstrap: int = 1000, seed: int = 0,
                            batch_size: int = 100) -> list[dict[str, Any]]:
    """`evaluate_log` with the spec's targets and estimators unless others are given."""
    spec, logged = source.spec, source.logged
    live = Policy(spec.policy.name, dict(spec.policy.params))
    wanted = list(targets or spec.evaluation.targets or default_targets(spec.arm_names, live=True))
    dists = {t: build_target(t, logged, reward_type=spec.reward.type, live=live, published=source.published,
                             batch_size=batch_size) for t in wanted}
    return evaluate_log(logged, dists, list(estimators or spec.evaluation.estimators), n_bootstrap=n_bootstrap,
                        seed=seed)


def run_continuous(client: Any, database: str = "sluice", *, now_ms: int, n_bootstrap: int = 1000,
                   seed: int = 0) -> int:
    """One round of the continuous offline evaluation: for every running experiment and every
    entity with serves, the spec's candidate policies over its last window, written to
    `offline_evaluations`. Returns the rows written; an entity that cannot be evaluated is
    logged and skipped, not fatal."""
    from sluice.analytics.attribution import AttributionError

    log = logging.getLogger(__name__)
    running = client.query(
        f"SELECT experiment_id FROM {database}.experiments GROUP BY experiment_id "
        f"HAVING argMax(status, spec_version) = 'running'").result_rows
    written = 0
    for (experiment,) in running:
        entities = client.query(f"SELECT DISTINCT entity FROM {database}.serves WHERE experiment_id = {{e:String}}",
                                parameters={"e": experiment}).result_rows
        for (entity,) in entities:
            try:
                source = read_log_clickhouse(client, experiment, entity, database=database)
                rows = evaluate_experiment_log(source, n_bootstrap=n_bootstrap, seed=seed)
            except (OfflineError, AttributionError, ope.OPEInputError) as exc:
                log.warning("offline evaluation of %s/%s skipped: %s", experiment, entity, exc)
                continue
            columns = ["computed_at", "experiment_id", "entity", "spec_version", "window_start", "window_end", "target",
                       "estimator", "estimate", "lower", "upper", "interval", "effective_sample_size", "max_weight",
                       "support_deficit", "n_rounds"]
            client.insert(f"{database}.offline_evaluations", [[
                _datetime(now_ms), experiment, entity, source.spec.spec_version, _datetime(source.window_start_ms),
                _datetime(source.window_end_ms), r["target"], r["estimator"], r["estimate"], r["lower"], r["upper"],
                r["interval"], r["effective_sample_size"], r["max_weight"], r["support_deficit"], r["n_rounds"],
            ] for r in rows], column_names=columns)
            written += len(rows)
    return written


def _datetime(ms: int) -> Any:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def latest_evaluations(client: Any, experiment: str, database: str = "sluice") -> list[dict[str, Any]]:
    """The rows of each entity's latest run of the continuous evaluation."""
    rows = client.query(
        f"SELECT entity, target, estimator, estimate, lower, upper, effective_sample_size, support_deficit, n_rounds, "
        f"toUnixTimestamp64Milli(window_start), toUnixTimestamp64Milli(window_end) "
        f"FROM {database}.offline_evaluations WHERE experiment_id = {{e:String}} "
        f"AND (entity, computed_at) IN (SELECT entity, max(computed_at) FROM {database}.offline_evaluations "
        f"WHERE experiment_id = {{e:String}} GROUP BY entity) ORDER BY entity, target, estimator",
        parameters={"e": experiment}).result_rows
    keys = ("entity", "target", "estimator", "estimate", "lower", "upper", "effective_sample_size", "support_deficit",
            "n_rounds", "window_start_ms", "window_end_ms")
    return [dict(zip(keys, r)) for r in rows]


def replay_policies(logged: Logged, policies: Sequence[Policy], *, seed: int = 0, batch_size: int = 100,
                    reward_type: str = "binary", plot: Path | None = None, n_bootstrap: int = 1000) -> list[dict[str, Any]]:
    """Each policy replayed through the log with its own posterior (`sluice.core.ope.replay_policy`):
    the rounds it saw, its mean reward on them, the regret against the best fixed arm over
    as many rounds (the arm with the best SNIPS estimate on the whole log), and the SNIPS
    estimate, with its interval, of the distribution it ends with. With `plot`, a PNG of
    every policy's running mean reward."""
    from sluice.core.policies import PolicyContext, policy_probabilities
    from sluice.core.sufficient import ArmStatistics

    log = logged.bandit_log()
    arm_values = {}
    for i, arm in enumerate(logged.arms):
        dist = ope.always_arm_action_dist(i, logged.n_rounds, len(logged.arms), logged.len_list)
        arm_values[arm] = ope.estimate(ope.SNIPS(), log, dist, n_bootstrap=0).estimate
    best_arm = max(arm_values, key=lambda a: arm_values[a] if np.isfinite(arm_values[a]) else -np.inf)
    results, traces = [], {}
    for k, policy in enumerate(policies):
        trace = ope.replay_policy(policy.name, policy.params, logged.arms, logged.action, logged.reward, logged.pscore,
                                  rng=seed + k, batch_size=batch_size, reward_type=reward_type)  # type: ignore[arg-type]
        label = policy.name if not policy.params else f"{policy.name}:{json.dumps(policy.params, sort_keys=True)}"
        traces[label] = trace
        kept = trace.accepted
        stats = ArmStatistics.from_rewards(logged.action[kept], logged.reward[kept], len(logged.arms))
        final = policy_probabilities(policy.name, policy.params, stats,
                                     PolicyContext(tuple(logged.arms), reward_type))  # type: ignore[arg-type]
        where = ope.estimate(ope.SNIPS(), log, ope.static_split_action_dist(final, logged.n_rounds, logged.len_list),
                             n_bootstrap=n_bootstrap, rng=seed)
        interval = where.bootstrap or where.normal
        results.append({
            "policy": label, "accepted": trace.n_accepted, "mean_reward": trace.mean_reward,
            "best_arm": best_arm, "best_arm_mean": arm_values[best_arm],
            "regret": float(trace.n_accepted * arm_values[best_arm] - trace.reward[kept].sum()),
            "final_weights": dict(zip(logged.arms, final.tolist())), "final_snips": where.estimate,
            "final_lower": interval.lower, "final_upper": interval.upper,
        })
    if plot is not None:
        _plot_replay(traces, arm_values[best_arm], best_arm, plot)
    return results


def _plot_replay(traces: Mapping[str, ope.ReplayTrace], best: float, best_arm: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    for label, trace in traces.items():
        running = trace.running_mean
        ax.plot(np.arange(1, running.size + 1), running, label=f"{label} ({trace.mean_reward:.4g})")
    ax.axhline(best, color="black", linestyle="--", linewidth=1, label=f"best fixed arm {best_arm} ({best:.4g})")
    ax.set_xlabel("rounds the policy saw")
    ax.set_ylabel("running mean reward")
    ax.set_title("Policies replayed through the log")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
