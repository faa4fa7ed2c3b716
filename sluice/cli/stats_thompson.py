"""`sluice stats thompson`: exact Thompson-sampling probabilities at the terminal."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Literal

import click
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PositiveList = Annotated[list[Annotated[float, Field(gt=0, allow_inf_nan=False)]], Field(min_length=1)]


class BetaInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    family: Literal["beta"]
    alpha: PositiveList
    beta: PositiveList
    arms: list[str] | None = None

    @model_validator(mode="after")
    def _lengths(self) -> BetaInput:
        _check_lengths(self.arms, alpha=self.alpha, beta=self.beta)
        return self


class StudentTInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    family: Literal["student_t"]
    loc: Annotated[list[Annotated[float, Field(allow_inf_nan=False)]], Field(min_length=1)]
    scale: PositiveList
    df: PositiveList
    arms: list[str] | None = None

    @model_validator(mode="after")
    def _lengths(self) -> StudentTInput:
        _check_lengths(self.arms, loc=self.loc, scale=self.scale, df=self.df)
        return self


def _check_lengths(arms: list[str] | None, **lists: list[float]) -> None:
    sizes = {k: len(v) for k, v in lists.items()} | ({"arms": len(arms)} if arms is not None else {})
    if len(set(sizes.values())) != 1:
        raise ValueError(f"lengths differ: {', '.join(f'{k}={n}' for k, n in sizes.items())}")


@click.command("thompson")
@click.option("--json", "as_json", is_flag=True, help='Print {"p": [...]} instead of a table.')
def thompson_command(as_json: bool) -> None:
    """P(best) of every arm, computed exactly, from posteriors given as JSON on stdin:

    \b
      {"family": "beta", "alpha": [...], "beta": [...]}
      {"family": "student_t", "loc": [...], "scale": [...], "df": [...]}

    An optional "arms": [names] labels the rows.
    """
    from sluice.core.thompson import beta_best_probabilities, student_t_best_probabilities

    text = sys.stdin.read()
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.ClickException(f"input is not JSON: {exc}") from None
    family = raw.get("family") if isinstance(raw, dict) else None
    model = {"beta": BetaInput, "student_t": StudentTInput}.get(family)  # type: ignore[arg-type]
    if model is None:
        raise click.ClickException(f'family: must be "beta" or "student_t", got {family!r}')
    try:
        parsed = model.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(x) for x in err["loc"]) or "input"
        raise click.ClickException(f"{field}: {err['msg']} (got {err.get('input')!r})") from None
    if isinstance(parsed, BetaInput):
        p = beta_best_probabilities(parsed.alpha, parsed.beta)
    else:
        p = student_t_best_probabilities(parsed.loc, parsed.scale, parsed.df)
    if as_json:
        click.echo(json.dumps({"p": p.tolist()}))
        return
    names = parsed.arms or [f"arm {i}" for i in range(len(p))]
    width = max(len(n) for n in names)
    click.echo(f"{'arm':<{width}}  P(best)")
    for name, value in zip(names, p):
        click.echo(f"{name:<{width}}  {value:.6g}")
