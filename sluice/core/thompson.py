"""Exact Thompson-sampling probabilities: P(arm i is best), no Monte Carlo.

    P_i = ∫ f_i(x) ∏_{j≠i} F_j(x) dx

for independent posteriors with densities f and CDFs F, within 1e-9 (absolute) of a
high-precision reference for every valid parameter (tests/unit/test_thompson.py), by
adaptive Gauss–Kronrod quadrature on one grid shared by all arms.

1. The integral is taken in a variable u in which every posterior is smooth, has no
   singular end and keeps its tails representable: u = logit(x) for Beta, x = s·sinh(u)
   for Student-t. A Beta density x^(α−1) with α < 1 is unbounded at x = 0, which no
   polynomial rule integrates well (a grid in x was off by 1e-3 to 4e-3 for Jeffreys
   priors, and by up to 0.4 with α or β = 0.01); in u it is ~e^(αu). The mass of
   Beta(0.01, 1) below x = 1e-308, about 1e-3, sits at u < −709, where x itself
   underflows. t tails become exponential in u, so even df ≪ 1 (mass beyond 1e300) is
   covered.
2. Only densities are evaluated, in forms that do not cancel for huge parameters: the Beta
   density from its deviance around the mode, with Stirling's series for the constant
   (scipy's betaln is off by 5e-8 at α + β = 1e7, its betainc by 3e-6 at 1e12). Each CDF
   is the integral of its density on the same grid: 1 minus the mass to the right of a
   piece at its left end, and within the piece a 15×15 spectral integration matrix.
3. Each arm's interval [lo_i, hi_i] leaves out ≤ 1e-13 of its mass on either side. Below
   L = max_j lo_j the integrand is < 1e-13 for every arm, so the domain is [L, max_i hi_i],
   and an arm with hi_i < L is never best (P_i < 2e-13, reported as 0).
4. Each arm proposes cuts every _SPACING of its widths around its centre, then pieces
   growing geometrically out to its interval's ends; logit adds its own near u = 0 (where
   1 + e^(−u) has complex zeros). Cuts closer than half the gap either proposer asks for
   are merged, so K similar arms share one grid instead of K grids.
5. On each piece, the 15 Gauss–Kronrod nodes, measured from the piece's left end (so that
   a piece 1e-12 wide at u = 20 keeps its nodes). Pieces are halved until, for every arm,
   the embedded 7-point Gauss rule agrees with the Kronrod rule to _PIECE_TOL: first for
   each density (so that the CDFs are right), then for each integrand. The Kronrod value
   is far better than that bound: on 250 random Beta cases of every kind, a bound of
   1e-6 still left every error below 2e-11.

An arm narrower than doubles resolve where it sits (Beta with α, β > 1e26, or a t scale
1e-13 of its distance to the highest loc) is a point mass. The product over j≠i is
exp(Σ_j log F_j − log F_i), with a separate path where F_i is 0. Identical arms are
computed once and share the result bitwise; the vector is normalised to sum to 1.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import special

from sluice.core.errors import CoreInputError

_TAIL = 1e-13  # mass left out below and above each arm's interval
_PIECE_TOL = 1e-9  # largest |Kronrod − Gauss| over a piece, for every arm, to accept it
_MAX_ROUNDS = 12  # halvings of a piece at most
_MAX_NODES = 2_000_000  # arms × pieces × 15 that one round may evaluate (memory), never reached but by absurd inputs
_SPACING = 2.0  # widths between an arm's own cuts near its centre
_REACH = 6.0  # ... out to this many widths
_GROWTH = 2.0  # then each piece this much longer than the one before, out to the tails
_FAR_STEPS = 40  # growing pieces out to each tail
_RESOLUTION = 1e-13  # an arm narrower than this (relative to |u|) is a point mass: 500 doubles wide
_HALF_LOG_2PI = 0.5 * np.log(2 * np.pi)
_LOG_2 = np.log(2.0)

# Gauss–Kronrod 15/7 on [-1, 1] (QUADPACK's qk15): positive nodes, Kronrod and Gauss weights.
_XK = (0.991455371120812639206854697526329, 0.949107912342758524526189684047851,
       0.864864423359769072789712788640926, 0.741531185599394439863864773280788,
       0.586087235467691130294144838258730, 0.405845151377397166906606412076961,
       0.207784955007898467600689403773245, 0.0)
_WK = (0.022935322010529224963732008058970, 0.063092092629978553290700663189204,
       0.104790010322250183839876322541518, 0.140653259715525918745189590510238,
       0.169004726639267902826583426598550, 0.190350578064785409913256402421014,
       0.204432940075298892414161999234649, 0.209482141084727828012999174891714)
_WG = (0.129484966168869693270611432679082, 0.279705391489276667901467771423780,
       0.381830050505118944950369775488975, 0.417959183673469387755102040816327)
_CENTRE = 7  # index of the node 0 among the 15


class PosteriorInputError(CoreInputError):
    """Posterior parameters that do not describe K ≥ 1 proper distributions."""


@dataclass(frozen=True)
class _Rule:
    nodes: NDArray[np.float64]  # (15,) ascending in [-1, 1]
    kronrod: NDArray[np.float64]  # (15,)
    excess: NDArray[np.float64]  # (15,) Kronrod minus Gauss weights: the error estimate
    cumulative: NDArray[np.float64]  # (15, 15): ∫_{-1}^{node k} p = Σ_m cumulative[k, m] p(node m), degree ≤ 14


@functools.cache
def _rule() -> _Rule:
    x = np.concatenate([-np.array(_XK[:-1]), np.array(_XK[::-1])])
    kronrod = np.concatenate([np.array(_WK[:-1]), np.array(_WK[::-1])])
    gauss = np.zeros(15)
    gauss[1::2] = np.concatenate([np.array(_WG[:-1]), np.array(_WG[::-1])])
    # Interpolate in the Legendre basis and integrate: ∫_{-1}^{x} P_j = (P_{j+1} − P_{j−1}) / (2j + 1).
    legendre = np.polynomial.legendre.legvander(x, 15)  # P_0 .. P_15 at the nodes
    integral = np.empty((15, 15))
    integral[:, 0] = x + 1
    for j in range(1, 15):
        integral[:, j] = (legendre[:, j + 1] - legendre[:, j - 1]) / (2 * j + 1)
    return _Rule(x, kronrod, kronrod - gauss, integral @ np.linalg.inv(legendre[:, :15]))


@dataclass(frozen=True)
class _Family:
    """K posteriors as the integrator sees them, in their integration variable u."""

    # log density in u of the arms `rows` (R,) at u = base + offset, each (1, N) or (R, N) ->
    # (R, N); u is passed in two parts so that u − (an arm's centre) keeps every digit of the
    # offset (the nodes of a piece 1e-10 wide at u = 20 would move by 1e-5 of it if rounded)
    logpdf: Callable[[NDArray[np.intp], NDArray[np.float64], NDArray[np.float64]], NDArray[np.float64]]
    lo: NDArray[np.float64]  # (K,) below lo_i arm i has mass ≤ _TAIL
    hi: NDArray[np.float64]  # (K,) above hi_i arm i has mass ≤ _TAIL
    # cuts proposed for the arms `rows`: points and the gap each asks for
    cuts: Callable[[NDArray[np.intp]], tuple[NDArray[np.float64], NDArray[np.float64]]]
    centre: NDArray[np.float64]  # (K,) where each arm's mass is
    point: NDArray[np.bool_]  # (K,) arms narrower than doubles resolve at their centre: point masses


def _binet(x: NDArray[np.float64]) -> NDArray[np.float64]:
    """log Γ(x) − ((x − ½) log x − x + ½ log 2π), accurate for every x > 0 (Stirling's series from 12 on)."""
    big = x >= 12
    xs = np.where(big, 1.0, x)
    direct = special.gammaln(xs) - ((xs - 0.5) * np.log(xs) - xs + _HALF_LOG_2PI)
    r = 1 / np.where(big, x, 12.0)
    r2 = r * r
    series = r * (1 / 12 - r2 * (1 / 360 - r2 * (1 / 1260 - r2 * (1 / 1680 - r2 / 1188))))
    return np.where(big, series, direct)


def _far_offsets(gap: NDArray[np.float64], span: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Distances (R, _FAR_STEPS) of the cuts beyond an arm's last near cut, and their gaps:
    pieces from `gap` on, each _GROWTH times the last, or faster where that is needed to
    cover `span` (a tail ~e^(−0.01 u) is 3000 wide at 1e-13, its width only 10)."""
    growth = np.maximum(_GROWTH, (np.maximum(span, gap) / gap) ** (1 / (_FAR_STEPS - 1)))
    gaps = gap[:, None] * growth[:, None] ** np.arange(1, _FAR_STEPS + 1)
    return np.cumsum(gaps, axis=1), gaps


def _arm_cuts(centre: NDArray[np.float64], width: NDArray[np.float64], lo: NDArray[np.float64],
              hi: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per arm, cuts every _SPACING widths out to ±_REACH, then growing pieces out to
    [lo, hi]; with the gap each cut asks for (its distance to the arm's cut nearer the centre)."""
    n = np.ceil(_REACH / _SPACING)
    near = _SPACING * np.arange(-n, n + 1)
    m, w = centre[:, None], width[:, None]
    gap = _SPACING * width
    left, left_gaps = _far_offsets(gap, centre - lo)
    right, right_gaps = _far_offsets(gap, hi - centre)
    points = np.concatenate([m + w * near[0] - left, m + w * near, m + w * near[-1] + right], axis=1)
    gaps = np.concatenate([left_gaps, np.broadcast_to(gap[:, None], (gap.size, near.size)), right_gaps], axis=1)
    return points.ravel(), gaps.ravel()


def _expm1_minus(z: NDArray[np.float64]) -> NDArray[np.float64]:
    """e^z − 1 − z without cancelling: a series below |z| = 1e-2 (7 terms: 1e-17 relative)."""
    small = np.abs(z) < 1e-2
    zs = np.where(small, z, 0.0)
    series = zs * zs * (1 / 2 + zs * (1 / 6 + zs * (1 / 24 + zs * (1 / 120 + zs * (1 / 720 + zs * (1 / 5040 + zs / 40320))))))
    return np.where(small, series, np.expm1(z) - z)


def _beta_family(a: NDArray[np.float64], b: NDArray[np.float64]) -> _Family:
    """Beta(a, b) in u = logit(x), where its density x^a (1 − x)^b / B(a, b) is log-concave."""
    # Beyond 1e-300 and 1e300 a Beta is a point mass as far as doubles can tell: clamp tiny
    # parameters and scale huge pairs down, keeping their mean, so that nothing overflows.
    a, b = np.maximum(a, 1e-300), np.maximum(b, 1e-300)
    shrink = np.minimum(1.0, 1e300 / np.maximum(a, b))
    a, b = a * shrink, b * shrink
    n = a + b
    mu, nu = a / n, b / n  # the mode in u is log(a/b), where x = mu and 1 − x = nu
    # The mode to beyond double precision where the platform has it: at a + b = 1e12 the
    # rounding of log(a/b) alone moves a posterior by 1e-9 of its width.
    exact_mode = np.log(a.astype(np.longdouble) / b.astype(np.longdouble))
    mode = exact_mode.astype(np.float64)
    mode_residual = (exact_mode - mode).astype(np.float64)
    log_mu = np.where(mu < 0.5, np.log(mu), np.log1p(-nu))  # from the smaller one: log(1 − 5e-10) needs log1p
    log_nu = np.where(nu < 0.5, np.log(nu), np.log1p(-mu))
    # log density at the mode, a log mu + b log nu − log B(a, b), by Stirling's series: no
    # terms of size a + b cancel
    at_mode = 0.5 * (np.log(a) + np.log(b) - np.log(n)) - _HALF_LOG_2PI - (_binet(a) + _binet(b) - _binet(n))
    log_inv_beta = at_mode - a * log_mu - b * log_nu  # −log B(a, b), to ~1e-16 (a + b)
    # Above a + b = 1e4 the direct a log x + b log(1 − x) − log B loses more than 1e-12 to
    # rounding; there the density comes from its deviance around the mode.
    big = n > 1e4

    def logpdf(rows: NDArray[np.intp], base: NDArray[np.float64], offset: NDArray[np.float64]) -> NDArray[np.float64]:
        u = base + offset
        log_x, log_y = -np.logaddexp(0.0, -u), -np.logaddexp(0.0, u)
        out = a[rows, None] * log_x + b[rows, None] * log_y + log_inv_beta[rows, None]
        deviance = big[rows]
        if deviance.any():
            r = rows[deviance, None]
            start, step = np.broadcast_to(base, out.shape)[deviance], np.broadcast_to(offset, out.shape)[deviance]
            t = ((start - mode[r]) - mode_residual[r]) + step
            near = np.abs(t) < 1
            tn = np.where(near, t, 0.0)
            # a log(x/mu) + b log((1 − x)/nu) = −n log(mu e^(nu t) + nu e^(−mu t)), and the
            # first-order terms of that sum cancel exactly: mu E(nu t) + nu E(−mu t), E(z) = e^z − 1 − z
            close = -n[r] * np.log1p(mu[r] * _expm1_minus(nu[r] * tn) + nu[r] * _expm1_minus(-mu[r] * tn))
            lx, ly = np.broadcast_to(log_x, out.shape)[deviance], np.broadcast_to(log_y, out.shape)[deviance]
            away = a[r] * (lx - log_mu[r]) + b[r] * (ly - log_nu[r])
            out[deviance] = np.where(near, close, away) + at_mode[r]
        return out

    # Tails. The density is log-concave in u, so beyond a point u0 on the left of the mode
    # the mass is at most f(u0) / (log f)'(u0), with (log f)' = a σ(−u) − b σ(u); on the right
    # likewise. lo and hi are the nearest of mode ∓ width·2^k, and of the points where the
    # far tails ~e^(a u + ...) and ~e^(−b u + ...) leave _TAIL, where that bound is ≤ _TAIL.
    width = np.sqrt(1 / a + 1 / b)  # in u, from the curvature at the mode
    steps = 2.0 ** np.arange(0, 60)
    every = np.arange(a.size)
    tails = []
    for sign, rate in ((-1.0, a), (1.0, b)):
        exponential = np.abs((np.log(_TAIL) + np.log(rate) - log_inv_beta) / rate - mode)
        distance = np.concatenate([width[:, None] * steps, exponential[:, None] * [1.0, 1.5, 2.0, 4.0]], axis=1)
        distance.sort(axis=1)
        u0 = mode[:, None] + sign * distance
        slope = np.abs(a[:, None] * special.expit(-u0) - b[:, None] * special.expit(u0))
        bound = logpdf(every, u0, np.zeros(1)[:, None]) - np.log(slope)
        tails.append(u0[every, np.argmax(bound <= np.log(_TAIL), axis=1)])
    lo, hi = tails
    # logit's own cuts: 1 + e^(−u) is 0 at u = ±iπ, so pieces near u = 0 stay short
    logit_cuts = np.concatenate([-(2.0 ** np.arange(11, -1, -1)), [0.0], 2.0 ** np.arange(12)])
    logit_gaps = np.maximum(np.abs(logit_cuts) / 2, 1.0)

    def cuts(rows: NDArray[np.intp]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        points, gaps = _arm_cuts(mode[rows], width[rows], lo[rows], hi[rows])
        return np.concatenate([points, logit_cuts]), np.concatenate([gaps, logit_gaps])

    return _Family(logpdf, lo, hi, cuts, mode, width < _RESOLUTION * np.maximum(1.0, np.abs(mode)))


def _student_t_family(loc: NDArray[np.float64], scale: NDArray[np.float64], df: NDArray[np.float64]) -> _Family:
    """Location-scale Student-t in u, where x = s·sinh(u): linear near 0, logarithmic in the tails."""
    # P(best) does not change under x → (x − c)/unit: measure from the highest loc in units of
    # the widest scale, so that no scale or distance overflows.
    unit = float(np.max(scale))
    loc, scale = (loc - np.max(loc)) / unit, scale / unit
    # The core of t_df is about min(1, √df) scales wide (its density has poles at z = ±i√df).
    width = scale * np.minimum(1.0, np.sqrt(df))
    s = float(np.min(width))
    log_s = np.log(s)
    half_df = df / 2
    # log Γ((df + 1)/2) − log Γ(df/2) by Stirling's series, so that huge df do not cancel
    log_ratio = half_df * np.log1p(0.5 / half_df) + 0.5 * np.log(half_df) - 0.5 + _binet(half_df + 0.5) - _binet(half_df)
    lognorm = log_ratio - 0.5 * np.log(df * np.pi) - np.log(scale)
    # P(T > z) = z^−df · e^tail_const · (1 + O(z^−2)) for large z
    tail_const = (half_df - 1) * np.log(df) - special.betaln(half_df, 0.5)

    # Each arm's centre in u, to beyond double precision where the platform has it: z is formed
    # from u − centre, as rounding x = s sinh u would shift an arm 1e-9 wide by 1e-7 of its width.
    exact_centre = np.arcsinh(loc.astype(np.longdouble) / s)
    centre = exact_centre.astype(np.float64)
    centre_residual = (exact_centre - centre).astype(np.float64)
    log_factor = np.log(2 * s) - np.log(scale)

    def logpdf(rows: NDArray[np.intp], base: NDArray[np.float64], offset: NDArray[np.float64]) -> NDArray[np.float64]:
        u = base + offset
        # z = (s sinh u − loc)/scale = (2s/scale) cosh((u + centre)/2) sinh((u − centre)/2), by its log
        half_sum = (u + centre[rows, None]) / 2
        half_gap = np.abs(((base - centre[rows, None]) - centre_residual[rows, None]) + offset) / 2
        log_cosh = np.abs(half_sum) - _LOG_2 + np.log1p(np.exp(-2 * np.abs(half_sum)))
        log_sinh = np.where(half_gap < 20, np.log(np.sinh(np.minimum(half_gap, 20))), half_gap - _LOG_2)
        log_abs_z = log_factor[rows, None] + log_cosh + log_sinh
        d = df[rows, None]
        log1p_z2 = np.logaddexp(0.0, 2 * log_abs_z - np.log(d))  # log(1 + z²/df)
        log_jacobian = log_s + np.abs(u) - _LOG_2 + np.log1p(np.exp(-2 * np.abs(u)))  # log(s cosh u)
        return lognorm[rows, None] - (d + 1) / 2 * log1p_z2 + log_jacobian

    def to_u(x: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.arcsinh(x / s)

    # Tails: the t quantiles; past 1e100 scales from the power law of the tail.
    t_q = special.stdtrit(df, 1.0 - _TAIL)
    log_tq = np.where(np.isfinite(t_q) & (t_q < 1e100), np.log(np.where(np.isfinite(t_q), t_q, 1.0)),
                      (tail_const - np.log(_TAIL)) / df)
    log_reach = np.log(scale) + log_tq - log_s  # log of the distance to a tail end, in units of s
    direct = log_reach < 600
    reach = s * np.exp(np.minimum(log_reach, 600))
    lo = np.minimum(np.where(direct, to_u(loc - reach), -(log_reach + _LOG_2)), to_u(loc))
    hi = np.maximum(np.where(direct, to_u(loc + reach), log_reach + _LOG_2), to_u(loc))

    def cuts(rows: NDArray[np.intp]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        # every _SPACING widths around each centre out to ±_REACH in x, mapped to u; then
        # pieces growing by _GROWTH in u out to the tails (which are exponential in u)
        n = np.ceil(_REACH / _SPACING)
        near = to_u(loc[rows, None] + width[rows, None] * _SPACING * np.arange(-n, n + 1))
        near_gaps = np.diff(near, axis=1)
        left, left_gaps = _far_offsets(near_gaps[:, 0], near[:, 0] - lo[rows])
        right, right_gaps = _far_offsets(near_gaps[:, -1], hi[rows] - near[:, -1])
        points = np.concatenate([near[:, :1] - left, near, near[:, -1:] + right], axis=1)
        inner = np.minimum(np.concatenate([near_gaps[:, :1], near_gaps], axis=1),
                           np.concatenate([near_gaps, near_gaps[:, -1:]], axis=1))
        return points.ravel(), np.concatenate([left_gaps, inner, right_gaps], axis=1).ravel()

    width_u = width / np.hypot(s, loc)  # dx/du = s cosh u = √(s² + x²)
    return _Family(logpdf, lo, hi, cuts, centre, width_u < _RESOLUTION * np.maximum(1.0, np.abs(centre)))


def _merge_cuts(points: NDArray[np.float64], gaps: NDArray[np.float64], domain: tuple[float, float]) -> NDArray[np.float64]:
    """Sorted cuts over `domain`; a cut closer to the last one kept than half the gap either asks for is dropped."""
    keep = (points > domain[0]) & (points < domain[1])
    p, g = points[keep], gaps[keep]
    order = np.argsort(p, kind="stable")
    kept = [domain[0]]
    kept_gap = np.inf
    for x, gap in zip(p[order].tolist(), g[order].tolist()):
        if x - kept[-1] >= 0.5 * min(gap, kept_gap):
            kept.append(x)
            kept_gap = gap
        else:
            kept_gap = min(kept_gap, gap)
    kept.append(domain[1])
    return np.asarray(kept)


@dataclass
class _Pieces:
    """Pieces of the domain with their nodes' log densities (rows, pieces, 15)."""

    left: NDArray[np.float64]
    right: NDArray[np.float64]
    log_pdf: NDArray[np.float64]

    @property
    def half(self) -> NDArray[np.float64]:
        return (self.right - self.left) / 2


def _evaluate(family: _Family, rows: NDArray[np.intp], left: NDArray[np.float64], right: NDArray[np.float64]) -> _Pieces:
    half = (right - left) / 2
    base = np.repeat(left, 15)[None, :]  # not the midpoint, which is rounded: the nodes measured from an exact end
    offset = (half[:, None] * (1 + _rule().nodes)).ravel()[None, :]
    return _Pieces(left, right, family.logpdf(rows, base, offset).reshape(rows.size, left.size, 15))


def _halves(pieces: _Pieces, split: NDArray[np.bool_], family: _Family, rows: NDArray[np.intp]) -> _Pieces:
    left, right = pieces.left[split], pieces.right[split]
    middle = left + (right - left) / 2
    return _evaluate(family, rows, np.concatenate([left, middle]), np.concatenate([middle, right]))


def _join(parts: list[_Pieces]) -> _Pieces:
    left = np.concatenate([p.left for p in parts])
    order = np.argsort(left, kind="stable")
    return _Pieces(left[order], np.concatenate([p.right for p in parts])[order],
                   np.concatenate([p.log_pdf for p in parts], axis=1)[:, order])


def _resolved_densities(family: _Family, rows: NDArray[np.intp], cuts: NDArray[np.float64]) -> _Pieces:
    """The grid refined until every density is integrated to _PIECE_TOL on every piece."""
    rule = _rule()
    pending = _evaluate(family, rows, cuts[:-1], cuts[1:])
    done: list[_Pieces] = []
    for round_ in range(_MAX_ROUNDS + 1):
        error = np.abs(np.exp(pending.log_pdf) @ rule.excess).max(axis=0) * pending.half
        ok = (error <= _PIECE_TOL) | (round_ == _MAX_ROUNDS) | (pending.log_pdf.size > _MAX_NODES)
        done.append(_Pieces(pending.left[ok], pending.right[ok], pending.log_pdf[:, ok]))
        if ok.all():
            break
        pending = _halves(pending, ~ok, family, rows)
    return _join(done)


def _best_probabilities(family: _Family, counts: NDArray[np.int64]) -> NDArray[np.float64]:
    """P(best) for each distinct arm (rows of `family`), arms repeated `counts` times."""
    rule = _rule()
    p = np.zeros(counts.size)
    domain = (float(np.max(family.lo)), float(np.max(family.hi)))
    # A point mass at c beats every other point mass below c; only the highest ones can be
    # best, with probability ∏_j F_j(c) for the others; above c it is no obstacle (F = 1).
    top = np.zeros(counts.size, bool)
    if family.point.any():
        c = float(np.max(family.centre[family.point]))
        top = family.point & (family.centre == c)
        domain = (max(domain[0], c), domain[1])
    rows = np.flatnonzero((family.hi >= domain[0]) & ~family.point)  # the others have F = 1 on the domain
    if rows.size + top.any() <= 1 or domain[1] <= domain[0]:
        best = top if top.any() else np.isin(np.arange(counts.size), rows)
        p[best] = 1.0 / counts[best].sum()
        return p
    points, gaps = family.cuts(rows)
    pieces = _resolved_densities(family, rows, _merge_cuts(points, gaps, domain))
    # Each CDF at each piece's left end: 1 minus the mass to its right (≤ _TAIL lies beyond the domain).
    mass = (np.exp(pieces.log_pdf) @ rule.kronrod) * pieces.half
    anchor = 1.0 - np.cumsum(mass[:, ::-1], axis=1)[:, ::-1]
    if top.any():
        p[top] = np.exp(counts[rows] @ np.log(np.clip(anchor[:, 0], 0.0, 1.0))) / counts[top].sum()
    m = counts[rows].astype(np.float64)[:, None, None]
    for round_ in range(_MAX_ROUNDS + 1):
        pdf = np.exp(pieces.log_pdf)
        cdf = np.clip(anchor[:, :, None] + pieces.half[None, :, None] * (pdf @ rule.cumulative.T), 0.0, 1.0)
        log_f = np.log(cdf)
        zero = cdf <= 0
        finite = np.where(zero, 0.0, log_f)
        total_finite = (m * finite).sum(axis=0)  # Σ_j m_j log F_j over finite terms, (P, 15)
        zeros = (m * zero).sum(axis=0)  # copies with F = 0 there
        # Σ_{j≠i} log F_j for one copy of arm i: drop one copy of i's own term.
        log_others = np.where(zeros[None] - zero > 0, -np.inf, total_finite[None] - finite)
        integrand = np.exp(pieces.log_pdf + log_others)
        error = np.abs(integrand @ rule.excess).max(axis=0) * pieces.half
        ok = (error <= _PIECE_TOL) | (round_ == _MAX_ROUNDS) | (integrand.size > _MAX_NODES)
        p[rows] += (integrand[:, ok] @ rule.kronrod) @ pieces.half[ok]
        if ok.all():
            break
        # halve the rest; the right halves start at the centre node, where the CDF is known
        split = ~ok
        anchor = np.concatenate([anchor[:, split], cdf[:, split, _CENTRE]], axis=1)
        pieces = _halves(pieces, split, family, rows)
    return np.maximum(p, 0.0)


def _as_params(name: str, values: ArrayLike, *, positive: bool = True) -> NDArray[np.float64]:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise PosteriorInputError(f"{name} must be a non-empty 1-D array, but shape {arr.shape} is given")
    bad = ~np.isfinite(arr) | ((arr <= 0) if positive else np.zeros(arr.shape, bool))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        what = "finite and > 0" if positive else "finite"
        raise PosteriorInputError(f"{name}[{i}] must be {what}, but {float(arr[i])} is given")
    return arr


def _same_length(**arrays: NDArray[np.float64]) -> None:
    sizes = {k: v.size for k, v in arrays.items()}
    if len(set(sizes.values())) != 1:
        raise PosteriorInputError(f"parameter arrays must have one length, but got {sizes}")


def _solve(family_of: Callable[[NDArray[np.float64]], _Family], params: NDArray[np.float64]) -> NDArray[np.float64]:
    """Group identical arms, integrate once per distinct arm, normalise, expand."""
    distinct, inverse, counts = np.unique(params, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.ravel()
    if distinct.shape[0] == 1:
        return np.full(params.shape[0], 1.0 / params.shape[0])
    # np.where evaluates both branches: overflow, underflow and log(0) in the branch not taken
    # are expected. A NaN that reaches a result is not, and fails the check below.
    with np.errstate(all="ignore"):
        p_distinct = _best_probabilities(family_of(distinct), counts)
    total = float(p_distinct @ counts)
    if not np.isfinite(total) or total <= 0:
        raise FloatingPointError(f"Thompson integral failed (sum of P(best) = {total})")
    return (p_distinct / total)[inverse]


def beta_best_probabilities(alpha: ArrayLike, beta: ArrayLike) -> NDArray[np.float64]:
    """P(arm i has the largest rate) for independent Beta(alpha_i, beta_i) posteriors.

    alpha, beta: shape (K,), finite and > 0. Returns shape (K,), summing to 1, each within
    1e-9 of the exact value.
    """
    a = _as_params("alpha", alpha)
    b = _as_params("beta", beta)
    _same_length(alpha=a, beta=b)
    return _solve(lambda d: _beta_family(d[:, 0], d[:, 1]), np.column_stack([a, b]))


def student_t_best_probabilities(loc: ArrayLike, scale: ArrayLike, df: ArrayLike) -> NDArray[np.float64]:
    """P(arm i has the largest mean) for independent location-scale Student-t posteriors.

    loc: shape (K,), finite; scale, df: shape (K,), finite and > 0. Returns shape (K,),
    summing to 1, each within 1e-9 of the exact value.
    """
    m = _as_params("loc", loc, positive=False)
    s = _as_params("scale", scale)
    d = _as_params("df", df)
    _same_length(loc=m, scale=s, df=d)
    return _solve(lambda p: _student_t_family(p[:, 0], p[:, 1], p[:, 2]), np.column_stack([m, s, d]))


def top_two_probabilities(p_best: ArrayLike, beta: float = 0.5) -> NDArray[np.float64]:
    """Selection probabilities of top-two Thompson sampling, from exact P(best).

    Top-two TS draws a leader I from the posterior; with probability `beta` it plays I,
    otherwise it draws again until the argmax J differs from I and plays J. Redrawing until
    J ≠ I makes J distributed as P(best) conditioned on ≠ I, so

        P(play i) = beta · p_i + (1 − beta) · Σ_{j≠i} p_j · p_i / (1 − p_j).

    An arm with p_j = 1 (every other arm at 0) has no challenger: its share goes to it.
    """
    p = _as_params("p_best", p_best, positive=False)
    if (p < 0).any() or abs(p.sum() - 1) > 1e-9:
        raise PosteriorInputError(f"p_best must be non-negative and sum to 1, but sums to {p.sum()!r}")
    if not 0 <= beta <= 1:
        raise PosteriorInputError(f"beta must be in [0, 1], but {beta!r} is given")
    rest = 1.0 - p
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(rest > 0, p / rest, 0.0)  # p_j / (1 − p_j)
    challenger = p * (ratio.sum() - ratio)  # Σ_{j≠i} p_j p_i / (1 − p_j)
    lonely = np.where(rest <= 0, p, 0.0)  # a sure leader keeps the (1 − beta) share
    out = beta * p + (1 - beta) * (challenger + lonely)
    return out / out.sum()
