"""`sluice evaluate` and `sluice replay`: offline evaluation of logged serves."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from sluice.cli._common import settings, sluice_errors

SOURCE_HELP = "a file (--file, columns mapped by --column) or an experiment's log in ClickHouse (--experiment, --entity)"


def _source_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--file", "file_", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help="A parquet or CSV log."),
        click.option("--column", "columns", multiple=True, metavar="ROLE=COLUMN",
                     help="Which column holds a role: action, reward, pscore, position, timestamp "
                          "(e.g. --column action=item_id --column pscore=propensity_score)."),
        click.option("--context", "context", multiple=True, metavar="COLUMN",
                     help="A context feature column for the reward model of DM/DR (repeat)."),
        click.option("--arm", "arms", multiple=True, help="Arm names in action-id order (default: sorted names)."),
        click.option("--experiment", default=None, help="Read this experiment's log from ClickHouse."),
        click.option("--entity", default=None, help="The entity whose log to read (with --experiment)."),
        click.option("--days", type=click.FloatRange(min=0.01), default=None,
                     help="Days of log before the newest serve [default: the spec's evaluation window]."),
        click.option("--database", default="sluice", show_default=True),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed of every random draw."),
        click.option("--batch-size", type=click.IntRange(min=1), default=100, show_default=True,
                     help="Rounds between policy updates when a policy is replayed over the log."),
        click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _load(file_: Path | None, columns: tuple[str, ...], context: tuple[str, ...], arms: tuple[str, ...],
          experiment: str | None, entity: str | None, days: float | None, database: str) -> Any:
    """(Logged, ExperimentLog or None) from the chosen source."""
    from sluice.analytics.offline import OfflineError, read_log_clickhouse, read_log_file

    if (file_ is None) == (experiment is None):
        raise click.UsageError(f"give one source: {SOURCE_HELP}")
    if file_ is not None:
        mapping = {}
        for item in columns:
            role, eq, column = item.partition("=")
            if not eq or not column:
                raise click.UsageError(f"--column {item!r}: say ROLE=COLUMN, e.g. action=item_id")
            mapping[role] = column
        return read_log_file(file_, mapping, context, arms or None), None
    if entity is None:
        raise click.UsageError("--experiment needs --entity (the log of one entity is evaluated)")
    from sluice.clickhouse import connect

    s = settings()
    client = connect(s.clickhouse_url, path=s.chdb_path)
    try:
        source = read_log_clickhouse(client, experiment, entity, days=days, database=database)
    except OfflineError:
        raise
    finally:
        client.close()
    return source.logged, source


@click.command()
@_source_options
@click.option("--target", "targets", multiple=True,
              help="A policy to evaluate (repeat): equal, always:ARM, split:a=0.7,b=0.3, policy:NAME[:JSON], "
                   "current:NAME[:JSON], file:PATH.npy; from ClickHouse also live and published "
                   "[default: equal, each arm alone, and live for an experiment].")
@click.option("--estimator", "estimators", multiple=True, type=click.Choice(["ips", "snips", "dm", "dr", "switch-dr",
                                                                              "replay"]),
              help="Estimator (repeat) [default: ips, snips, dr].")
@click.option("--bootstrap", type=click.IntRange(min=0), default=1000, show_default=True,
              help="Bootstrap resamples for the intervals (0: the normal interval only).")
@sluice_errors
def evaluate(file_: Path | None, columns: tuple[str, ...], context: tuple[str, ...], arms: tuple[str, ...],
             experiment: str | None, entity: str | None, days: float | None, database: str, seed: int, batch_size: int,
             as_json: bool, targets: tuple[str, ...], estimators: tuple[str, ...], bootstrap: int) -> None:
    """What other policies would have earned on a log of serves: off-policy estimates (IPS,
    SNIPS, DM, DR, switch-DR, replay) with intervals and diagnostics (effective sample size,
    largest importance weight, the target's share on actions the log never took)."""
    from sluice.analytics.offline import (
        DEFAULT_ESTIMATORS,
        build_target,
        default_targets,
        evaluate_experiment_log,
        evaluate_log,
    )

    logged, source = _load(file_, columns, context, arms, experiment, entity, days, database)
    if source is not None:
        rows = evaluate_experiment_log(source, targets or None, estimators or None, n_bootstrap=bootstrap, seed=seed,
                                       batch_size=batch_size)
    else:
        wanted = list(targets) or default_targets(logged.arms, live=False)
        dists = {t: build_target(t, logged, batch_size=batch_size) for t in wanted}
        rows = evaluate_log(logged, dists, list(estimators or DEFAULT_ESTIMATORS), n_bootstrap=bootstrap, seed=seed)
    if as_json:
        click.echo(json.dumps({"source": logged.source, "rounds": logged.n_rounds, "arms": logged.arms,
                               "estimates": rows}, indent=2))
        return
    _print_rows(rows, f"{logged.source}: {logged.n_rounds:,} rounds, arms {', '.join(logged.arms)}")


def _print_rows(rows: list[dict[str, Any]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in ("target", "estimator", "estimate", "95 % interval", "ESS", "max weight", "support deficit"):
        table.add_column(col, justify="left" if col in ("target", "estimator") else "right")
    for r in rows:
        table.add_row(r["target"], r["estimator"], f"{r['estimate']:.5g}", f"[{r['lower']:.5g}, {r['upper']:.5g}]",
                      f"{r['effective_sample_size']:,.0f}", f"{r['max_weight']:.3g}", f"{r['support_deficit']:.1%}")
    Console().print(table)


@click.command()
@_source_options
@click.option("--policy", "policies", multiple=True, metavar="NAME[:JSON]",
              help="A policy to replay (repeat), e.g. thompson, epsilon_greedy:{\"epsilon\": 0.1}, ucb1, static "
                   "[default: the experiment's own policy, or thompson, epsilon_greedy, ucb1 and static].")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also draw each policy's running mean reward to this PNG.")
@sluice_errors
def replay(file_: Path | None, columns: tuple[str, ...], context: tuple[str, ...], arms: tuple[str, ...],
           experiment: str | None, entity: str | None, days: float | None, database: str, seed: int, batch_size: int,
           as_json: bool, policies: tuple[str, ...], plot: Path | None) -> None:
    """Run policies through the log in time order, each learning from the rounds it would
    have seen (rejection-sampling replay with propensities): its reward, the regret against
    the best fixed arm over the same rounds, and the off-policy estimates of where it ends."""
    from sluice.analytics.offline import Policy, replay_policies

    logged, source = _load(file_, columns, context, arms, experiment, entity, days, database)
    chosen = [Policy.parse(p) for p in policies]
    if not chosen:
        chosen = [Policy(source.spec.policy.name, dict(source.spec.policy.params))] if source is not None else [
            Policy("thompson", {}), Policy("epsilon_greedy", {"epsilon": 0.1}), Policy("ucb1", {}), Policy("static", {})]
    reward_type = source.spec.reward.type if source is not None else "binary"
    results = replay_policies(logged, chosen, seed=seed, batch_size=batch_size, reward_type=reward_type, plot=plot)
    if as_json:
        click.echo(json.dumps({"source": logged.source, "rounds": logged.n_rounds, "policies": results}, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{logged.source}: {logged.n_rounds:,} rounds replayed")
    for col in ("policy", "rounds it saw", "mean reward", "best fixed arm", "regret", "SNIPS of where it ends"):
        table.add_column(col, justify="left" if col == "policy" else "right")
    for r in results:
        table.add_row(r["policy"], f"{r['accepted']:,}", f"{r['mean_reward']:.5g}",
                      f"{r['best_arm']} ({r['best_arm_mean']:.5g})", f"{r['regret']:.1f}",
                      f"{r['final_snips']:.5g} [{r['final_lower']:.5g}, {r['final_upper']:.5g}]")
    Console().print(table)
    if plot is not None:
        click.echo(f"plot: {plot}", err=True)
