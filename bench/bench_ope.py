"""Off-policy evaluation at scale: IPS, SNIPS and DR with 1,000-resample bootstrap intervals
over a log of 1,000,000 rounds, 80 actions and 3 slots, given reward predictions
(`sluice.core.ope.evaluate`), next to a plain numpy loop of the same formulas in the same
run (per-round values computed directly, then 1,000 resamples of row indices, one at a
time). Fitting the cross-fitted reward model is timed as its own figure.

The log: contexts x (5 features), a logging policy that depends on the slot only (a fixed
non-uniform distribution per slot), binary rewards with a known mean per (x, action, slot);
the target is a softmax of the reward model's predictions per round and slot, so
action_dist and the predictions are full (n, 80, 3) arrays (1.9 GB each). Building the
data is not timed.
"""

from __future__ import annotations

import gc
import time

import numpy as np

from bench._figures import Figure
from sluice.core import ope

SUITE = "ope"
N_ACTIONS = 80
LEN_LIST = 3
N_FEATURES = 5
N_BOOTSTRAP = 1000


def _log(n: int, rng: np.random.Generator) -> ope.BanditLog:
    x = rng.normal(size=(n, N_FEATURES))
    position = rng.integers(0, LEN_LIST, n)
    logging = rng.dirichlet(np.full(N_ACTIONS, 2.0), size=LEN_LIST).T  # (actions, slots)
    cum = np.cumsum(logging, axis=0)
    cum[-1] = 1.0
    action = np.empty(n, dtype=np.int64)
    u = rng.random(n)
    for slot in range(LEN_LIST):
        rows = position == slot
        action[rows] = np.searchsorted(cum[:, slot], u[rows], side="right")
    base = rng.uniform(0.02, 0.12, (N_ACTIONS, LEN_LIST))
    beta = rng.normal(0, 0.01, (N_ACTIONS, N_FEATURES))
    mean = np.clip(base[action, position] + np.einsum("nd,nd->n", x, beta[action]), 0.0, 1.0)
    reward = (rng.random(n) < mean).astype(np.float64)
    return ope.BanditLog.of(action, reward, logging[action, position], N_ACTIONS, position, LEN_LIST, context=x)


def _target(q: np.ndarray) -> np.ndarray:
    """Softmax of the predictions over actions, per round and slot, (n, actions, slots)."""
    out = np.empty_like(q)
    for start in range(0, q.shape[0], 65_536):
        z = q[start:start + 65_536] * 40.0
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        out[start:start + 65_536] = z
    return out


def _numpy_loop(log: ope.BanditLog, action_dist: np.ndarray, q: np.ndarray, rng: np.random.Generator) -> dict[str, tuple[float, float, float]]:
    """The same three estimators and percentile intervals written plainly: per-round values,
    then one resample of n row indices per bootstrap round."""
    n = log.n_rounds
    rows = np.arange(n)
    w = action_dist[rows, log.action, log.position] / log.pscore
    q_logged = q[rows, log.action, log.position]
    q_target = np.average(q[rows, :, log.position], weights=action_dist[rows, :, log.position], axis=1)
    ips_u = w * log.reward
    dr_u = q_target + w * (log.reward - q_logged)
    boot = np.empty((N_BOOTSTRAP, 3))
    for b in range(N_BOOTSTRAP):
        idx = rng.integers(0, n, n)
        ips_b = ips_u[idx]
        boot[b] = ips_b.mean(), ips_b.sum() / w[idx].sum(), dr_u[idx].mean()
    lo, hi = np.percentile(boot, [2.5, 97.5], axis=0)
    estimates = (ips_u.mean(), ips_u.sum() / w.sum(), dr_u.mean())
    return {name: (float(e), float(a), float(b)) for name, e, a, b in zip(("ips", "snips", "dr"), estimates, lo, hi)}


def run(quick: bool) -> list[Figure]:
    n = 100_000 if quick else 1_000_000
    rng = np.random.default_rng(17)
    log = _log(n, rng)

    started = time.perf_counter()
    q = ope.fit_reward_model(log, n_folds=5, rng=1)
    fit_s = time.perf_counter() - started
    action_dist = _target(q)
    gc.collect()

    started = time.perf_counter()
    results = ope.evaluate(log, action_dist, [ope.IPS(), ope.SNIPS(), ope.DR()], q, n_bootstrap=N_BOOTSTRAP, rng=2)
    core_s = time.perf_counter() - started

    started = time.perf_counter()
    plain = _numpy_loop(log, action_dist, q, np.random.default_rng(3))
    loop_s = time.perf_counter() - started

    gap = max(abs(results[k].estimate - plain[k][0]) for k in plain)
    width_ratio = max(
        (results[k].bootstrap.upper - results[k].bootstrap.lower) / (plain[k][2] - plain[k][1]) for k in plain
        if results[k].bootstrap is not None
    )
    diag = results["ips"].diagnostics
    shown = "; ".join(f"{k} {results[k].estimate:.5f} [{results[k].bootstrap.lower:.5f}, {results[k].bootstrap.upper:.5f}]"
                      for k in ("ips", "snips", "dr") if results[k].bootstrap is not None)
    size = f"{n:,} rows × {N_ACTIONS} actions × {LEN_LIST} slots"
    return [
        Figure(SUITE, f"IPS+SNIPS+DR, {N_BOOTSTRAP} bootstrap resamples, {size}", core_s, "s", "lower",
               "plain numpy loop, same formulas", loop_s, goal=5.0 if not quick else None,
               note=f"{shown}; largest estimate gap to the loop {gap:.1e}; interval width vs loop ≤ {width_ratio:.3f}×; "
                    f"ESS {diag.effective_sample_size:,.0f}, max weight {diag.max_importance_weight:.1f}"),
        Figure(SUITE, f"reward model fit, 5-fold cross-fitted, {size}", fit_s, "s", "lower",
               note=f"(action, slot) means + per-action within-cell ridge on {N_FEATURES} context features; writes (n, actions, slots) predictions"),
    ]
