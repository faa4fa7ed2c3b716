"""`sluice stats compare | power | decide`: tests, sample sizes and decisions at the terminal.

Thin: parse flags or JSON on stdin, build the core's inputs, call `sluice.core`, print a
text table or `--json`. Every input error is one line naming the field, exit status 1.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import click
from pydantic import BaseModel, ConfigDict, Field, ValidationError

if TYPE_CHECKING:
    # The core pulls in scipy (about a second); it is imported when a command runs, so the
    # rest of `sluice` starts fast.
    from sluice.core.decisions import Decision
    from sluice.core.power import SampleSize
    from sluice.core.stats.comparison import ArmData, Comparison

M = TypeVar("M", bound=BaseModel)

# --- input ---------------------------------------------------------------------------------


class ArmInput(BaseModel):
    """One arm in JSON input: binary (`successes`) or continuous (`sum`, `sum_sq`)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    n: float = Field(ge=0)
    successes: float | None = Field(None, ge=0)
    sum: float | None = None
    sum_sq: float | None = Field(None, ge=0)


class CompareInput(BaseModel):
    """`sluice stats compare` JSON input (see the command's help)."""

    model_config = ConfigDict(extra="forbid")
    arms: list[ArmInput] = Field(min_length=2)
    control: str | None = None
    confidence: float = Field(0.95, gt=0, lt=1)
    expected_serves: list[float] | None = None
    mixture_sd: float | None = Field(None, gt=0)


class DecideInput(BaseModel):
    """`sluice stats decide` JSON input; `criteria` is validated as `DecisionCriteria`."""

    model_config = ConfigDict(extra="forbid")
    arms: list[ArmInput] = Field(min_length=2)
    control: str | None = None
    days_in_window: float = Field(ge=0)
    days_running: float = Field(ge=0)
    criteria: dict[str, Any] = Field(default_factory=dict)
    expected_serves: list[float] | None = None
    current_weights: list[float] | None = None


class PowerInput(BaseModel):
    """`sluice stats power` JSON input, the flags' names."""

    model_config = ConfigDict(extra="forbid")
    baseline: float
    mde: float
    alpha: float = 0.05
    power: float = 0.8
    arms: int = 2
    kind: Literal["binary", "continuous"] = "binary"
    sd: float | None = None
    absolute: bool = False


def one_line(exc: ValidationError, prefix: str = "") -> str:
    """A pydantic error as one line: `field.path: message (got value)`, errors joined by '; '."""
    parts = []
    for err in exc.errors():
        where = ".".join([prefix, *(str(x) for x in err["loc"])] if prefix else [str(x) for x in err["loc"]]) or "input"
        got = err.get("input")
        shown = "" if isinstance(got, dict) else f" (got {json.dumps(got, default=str)[:60]})"
        parts.append(f"{where}: {err['msg']}{shown}")
    return "; ".join(parts)


def fail(message: str) -> click.ClickException:
    return click.ClickException(message.replace("\n", " "))


def parse(model: type[M], data: Any) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise fail(one_line(exc)) from None


def read_stdin_json() -> Any:
    text = click.get_text_stream("stdin").read()
    if not text.strip():
        raise fail("no input: give --arm flags, or a JSON object on stdin (see --help)")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise fail(f"stdin: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None


def arm_from_flag(text: str) -> dict[str, Any]:
    """`NAME:N:SUCCESSES` (binary) or `NAME:N:SUM:SUM_SQ` (continuous) → an arm object."""
    parts = text.split(":")
    keys = {3: ("name", "n", "successes"), 4: ("name", "n", "sum", "sum_sq")}.get(len(parts))
    if keys is None:
        raise fail(f"--arm must be NAME:N:SUCCESSES or NAME:N:SUM:SUM_SQ, but {text!r} is given")
    out: dict[str, Any] = {"name": parts[0]}
    for key, value in zip(keys[1:], parts[1:], strict=True):
        try:
            out[key] = float(value)
        except ValueError:
            raise fail(f"--arm {parts[0]}: {key} must be a number, but {value!r} is given") from None
    return out


def floats_from_flag(flag: str, text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise fail(f"{flag} must be comma-separated numbers, but {text!r} is given") from None


def arm_data(arms: Sequence[ArmInput], control: str | None) -> tuple[ArmData, int]:
    """The core's `ArmData` and the control's index from parsed arms."""
    from sluice.core.stats.comparison import ArmData

    names = [a.name for a in arms]
    binary = [a.successes is not None for a in arms]
    for i, a in enumerate(arms):
        continuous = a.sum is not None and a.sum_sq is not None
        if (a.successes is not None) == continuous or (a.successes is None and (a.sum is None) != (a.sum_sq is None)):
            raise fail(f"arms.{i} ({a.name}): give successes (binary) or both sum and sum_sq (continuous)")
        if binary[i] != binary[0]:
            raise fail(f"arms.{i} ({a.name}): every arm must have the same kind of reward as arms.0 ({arms[0].name})")
    if control is None:
        c = 0
    elif control in names:
        c = names.index(control)
    else:
        raise fail(f"control: {control!r} is not one of the arms ({', '.join(names)})")
    n = [a.n for a in arms]
    if binary[0]:
        return ArmData.binary(n, [a.successes for a in arms], names), c
    return ArmData.continuous(n, [a.sum for a in arms], [a.sum_sq for a in arms], names), c


F = TypeVar("F", bound=Callable[..., Any])


def core_errors(fn: F) -> F:
    """Turn the core's input errors into one-line `Error: …` messages (exit 1)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from sluice.core.stats.checks import StatsInputError

        try:
            return fn(*args, **kwargs)
        except StatsInputError as exc:
            raise fail(str(exc)) from None
        except ValidationError as exc:
            raise fail(one_line(exc)) from None

    return wrapper  # type: ignore[return-value]


# --- output --------------------------------------------------------------------------------


def plain(value: Any) -> Any:
    """Dataclasses, enums, numpy values and pydantic models as JSON-ready values; NaN → null."""
    import numpy as np

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, BaseModel):
        return value.model_dump()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [plain(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        x = float(value)
        return x if math.isfinite(x) else (None if math.isnan(x) else ("inf" if x > 0 else "-inf"))
    return value


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell: the first left-aligned, the rest right-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def num(x: float, spec: str = ".4g") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def pval(p: float) -> str:
    return "-" if math.isnan(p) else (f"{p:.2e}" if p < 1e-4 else f"{p:.4f}")


def pct(x: float) -> str:
    return "-" if not math.isfinite(x) else f"{x:+.2%}"


def show_comparison(cmp: Comparison) -> str:
    level = f"{cmp.confidence:.0%}"
    arm_rows = [
        [a.name, f"{a.n:.0f}", num(a.mean), f"[{num(a.lower)}, {num(a.upper)}]", f"{a.p_best:.4f}",
         "control" if i == cmp.control else f"{a.p_beat_control:.4f}", num(a.expected_loss, ".3g")]
        for i, a in enumerate(cmp.arms)
    ]
    arms = table(["arm", "n", "mean", f"{level} CI", "P(best)", "P(beat ctl)", "exp. loss"], arm_rows)
    stat = "z" if cmp.kind == "binary" else "t"
    contrast_rows = [
        [c.name, num(c.difference), f"[{num(c.difference_lower)}, {num(c.difference_upper)}]", pct(c.relative_uplift),
         f"[{pct(c.uplift_lower)}, {pct(c.uplift_upper)}]", num(c.statistic, ".3f"), pval(c.p_value), pval(c.p_holm),
         pval(c.p_bh), pval(c.sequential_p), pval(c.sequential_p_holm)]
        for c in cmp.contrasts
    ]
    contrasts = table(
        [f"vs {cmp.control_name}", "diff", f"{level} CI", "uplift", f"{level} CI", stat, "p", "p Holm", "p BH",
         "mSPRT p", "mSPRT Holm"],
        contrast_rows,
    )
    lines = [f"{cmp.kind} rewards, control {cmp.control_name}, {level} intervals", "", arms, "", contrasts, ""]
    if cmp.chi_square is not None:
        ch = cmp.chi_square
        lines.append(f"chi-square, all arms equal: chi2 = {float(ch.statistic):.3f}, df = {ch.df}, p = {pval(float(ch.p_value))}")
    if cmp.srm is not None:
        s = cmp.srm
        lines.append(f"sample ratio (SRM): chi2 = {float(s.statistic):.3f}, df = {s.df}, p = {pval(float(s.p_value))}")
    lines.append(f"mSPRT mixture sd: {cmp.mixture_sd:.4g} (always-valid p-values, safe to check at any time)")
    return "\n".join(lines)


def show_decision(d: Decision) -> str:
    head = f"{d.verdict.value.upper()}  ({d.rule.value})\n{d.reason}"
    rows = [[a.name, a.action.value, num(a.p_best, ".4f"), num(a.weight, ".4f"), a.reason] for a in d.arms]
    out = [head, "", table(["arm", "action", "P(best)", "weight", "why"], rows)]
    if d.comparison is not None:
        out += ["", show_comparison(d.comparison)]
    return "\n".join(out)


def show_sample_size(s: SampleSize) -> str:
    rows = [
        ["events per arm", f"{s.per_arm:,}"],
        ["events in total", f"{s.total:,} ({s.n_arms} arms)"],
        ["baseline → treatment", f"{s.baseline:.6g} → {s.treatment:.6g} (difference {s.effect:+.6g})"],
        ["alpha", f"{s.alpha:g} family-wise, {s.alpha_per_comparison:.4g} per comparison (two-sided)"],
        ["power", f"{s.power:g} requested, {s.achieved_power:.4f} at this size"],
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


# --- commands ------------------------------------------------------------------------------

ARM_HELP = "An arm as NAME:N:SUCCESSES (binary) or NAME:N:SUM:SUM_SQ (continuous); repeat per arm."


@click.command("compare")
@click.option("--arm", "arms", multiple=True, metavar="SPEC", help=ARM_HELP)
@click.option("--control", default=None, help="Name of the control arm [default: the first arm].")
@click.option("--confidence", type=float, default=None, help="Interval level [default: 0.95].")
@click.option("--expected", default=None, metavar="X,Y,…", help="Expected serves or shares per arm, for the SRM test.")
@click.option("--mixture-sd", type=float, default=None, help="mSPRT mixture sd [default: 3 % of the control mean].")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@core_errors
def compare_command(
    arms: tuple[str, ...], control: str | None, confidence: float | None, expected: str | None,
    mixture_sd: float | None, as_json: bool,
) -> None:
    """Compare arms: tests, intervals, P(best), expected loss, SRM.

    Give arms as --arm flags, or with no --arm a JSON object on stdin:

    \b
      {"arms": [{"name": "a", "n": 10000, "successes": 1000},
                {"name": "b", "n": 10000, "successes": 1100}],
       "control": "a",                 optional, default the first arm
       "confidence": 0.95,             optional
       "expected_serves": [0.5, 0.5],  optional: counts or shares, enables SRM
       "mixture_sd": 0.003}            optional: tunes the mSPRT

    Continuous rewards: each arm has "sum" and "sum_sq" instead of "successes". The
    other flags override the matching JSON keys.
    """
    if arms:
        raw: dict[str, Any] = {"arms": [arm_from_flag(a) for a in arms]}
    else:
        raw = read_stdin_json()
        if not isinstance(raw, dict):
            raise fail("stdin: expected a JSON object with an 'arms' list")
    for key, value in (("control", control), ("confidence", confidence), ("mixture_sd", mixture_sd),
                       ("expected_serves", floats_from_flag("--expected", expected))):
        if value is not None:
            raw[key] = value
    from sluice.core.stats.comparison import compare

    req = parse(CompareInput, raw)
    data, c = arm_data(req.arms, req.control)
    result = compare(data, c, req.confidence, req.expected_serves, req.mixture_sd)
    click.echo(json.dumps(plain(result), indent=2) if as_json else show_comparison(result))


@click.command("power")
@click.option("--baseline", type=float, default=None, help="Control rate (binary) or mean (continuous).")
@click.option("--mde", type=float, default=None, help="Minimum detectable effect, relative (0.05 = +5 %).")
@click.option("--absolute", is_flag=True, default=None, help="Read --mde as an absolute difference.")
@click.option("--alpha", type=float, default=None, help="Family-wise significance level [default: 0.05].")
@click.option("--power", "power_", type=float, default=None, help="Target power [default: 0.8].")
@click.option("--arms", type=int, default=None, help="Number of arms, control included [default: 2].")
@click.option("--kind", type=click.Choice(["binary", "continuous"]), default=None, help="Reward kind [default: binary].")
@click.option("--sd", type=float, default=None, help="Per-event standard deviation (continuous rewards).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@core_errors
def power_command(
    baseline: float | None, mde: float | None, absolute: bool | None, alpha: float | None, power_: float | None,
    arms: int | None, kind: str | None, sd: float | None, as_json: bool,
) -> None:
    """Size an experiment: events per arm to detect an effect.

    Every treatment is compared with the control by a two-sided test; with K arms alpha is
    split over the K-1 comparisons (Bonferroni). Give flags, or with no --baseline a JSON
    object on stdin with the same names:

    \b
      {"baseline": 0.10, "mde": 0.05, "alpha": 0.05, "power": 0.8, "arms": 2,
       "kind": "binary", "sd": null, "absolute": false}
    """
    flags = {"baseline": baseline, "mde": mde, "absolute": absolute, "alpha": alpha, "power": power_,
             "arms": arms, "kind": kind, "sd": sd}
    raw: dict[str, Any] = {}
    if baseline is None:
        stdin = read_stdin_json()
        if not isinstance(stdin, dict):
            raise fail("stdin: expected a JSON object with baseline and mde")
        raw.update(stdin)
    raw.update({k: v for k, v in flags.items() if v is not None})
    from sluice.core.power import sample_size

    req = parse(PowerInput, raw)
    result = sample_size(
        req.baseline, req.mde, alpha=req.alpha, power=req.power, n_arms=req.arms,
        kind=req.kind, sd=req.sd, relative=not req.absolute,
    )
    click.echo(json.dumps(plain(result), indent=2) if as_json else show_sample_size(result))


@click.command("decide")
@click.option("--arm", "arms", multiple=True, metavar="SPEC", help=ARM_HELP)
@click.option("--control", default=None, help="Name of the control arm [default: the first arm].")
@click.option("--days-in-window", type=float, default=None, help="Days of data in the window.")
@click.option("--days-running", type=float, default=None, help="Days since the experiment started.")
@click.option("--criteria", "criteria_json", default=None, metavar="JSON", help="Decision criteria as a JSON object.")
@click.option("--weights", default=None, metavar="X,Y,…", help="Current weights per arm [default: equal].")
@click.option("--expected", default=None, metavar="X,Y,…", help="Expected serves or shares per arm, for the SRM check.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@core_errors
def decide_command(
    arms: tuple[str, ...], control: str | None, days_in_window: float | None, days_running: float | None,
    criteria_json: str | None, weights: str | None, expected: str | None, as_json: bool,
) -> None:
    """Decide: ship / iterate / kill / continue, and increase / decrease / stop / keep per arm.

    Give arms as --arm flags, or with no --arm a JSON object on stdin:

    \b
      {"arms": [{"name": "a", "n": 20000, "successes": 2000},
                {"name": "b", "n": 20000, "successes": 2300}],
       "control": "a",                    optional, default the first arm
       "days_in_window": 7, "days_running": 9,
       "criteria": {"min_window_days": 7, "min_events_per_arm": 1000,
                    "min_uplift": 0.03, "confidence": 0.95,
                    "max_duration_days": 14, "sequential": true,
                    "srm_alpha": 0.001, "stop_p_best": 0.01,
                    "weight_tolerance": 0.05},    optional, these are the defaults
       "current_weights": [0.5, 0.5],    optional
       "expected_serves": [0.5, 0.5]}    optional: counts or shares, enables SRM

    The other flags override the matching JSON keys. Rules, first match wins: sample
    ratio mismatch → iterate; minimum days or events not reached → continue (iterate if
    past the maximum duration); a treatment significantly better by at least the minimum
    uplift → ship; no treatment can reach the minimum uplift → kill; past the maximum
    duration → iterate; otherwise continue, moving weights toward P(best).
    """
    if arms:
        raw: dict[str, Any] = {"arms": [arm_from_flag(a) for a in arms]}
    else:
        raw = read_stdin_json()
        if not isinstance(raw, dict):
            raise fail("stdin: expected a JSON object with an 'arms' list")
    if criteria_json is not None:
        try:
            raw["criteria"] = json.loads(criteria_json)
        except json.JSONDecodeError as exc:
            raise fail(f"--criteria: not valid JSON ({exc.msg})") from None
    for key, value in (("control", control), ("days_in_window", days_in_window), ("days_running", days_running),
                       ("current_weights", floats_from_flag("--weights", weights)),
                       ("expected_serves", floats_from_flag("--expected", expected))):
        if value is not None:
            raw[key] = value
    from sluice.core.decisions import DecisionCriteria, decide

    req = parse(DecideInput, raw)
    try:
        criteria = DecisionCriteria.model_validate(req.criteria)
    except ValidationError as exc:
        raise fail(one_line(exc, prefix="criteria")) from None
    data, c = arm_data(req.arms, req.control)
    result = decide(
        data, criteria, days_in_window=req.days_in_window, days_running=req.days_running, control=c,
        expected_serves=req.expected_serves, current_weights=req.current_weights,
    )
    click.echo(json.dumps(plain(result), indent=2) if as_json else show_decision(result))

