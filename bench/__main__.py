"""Run the benchmarks: `python -m bench [--quick] [SUITE ...]`.

Each `bench/bench_<suite>.py` module exposes `run(quick: bool) -> list[Figure]`. Results go
to `bench/results/results.json` and `results.md`, and the table is printed.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time
from pathlib import Path

import click

from bench._figures import Figure, markdown_table, write_results
from sluice.cli._common import sigterm_unwinds

HERE = Path(__file__).parent


def _suites() -> list[str]:
    return sorted(m.name.removeprefix("bench_") for m in pkgutil.iter_modules([str(HERE)]) if m.name.startswith("bench_"))


@click.command()
@click.option("--quick", is_flag=True, help="A smoke run: fewer repetitions, smaller inputs.")
@click.option("--out", type=click.Path(path_type=Path), default=HERE / "results", show_default=True)
@click.argument("suites", nargs=-1)
def main(quick: bool, out: Path, suites: tuple[str, ...]) -> None:
    """Run the named benchmark SUITES (all of them when none is named)."""
    # SIGTERM (a timeout, CI stopping) unwinds like Ctrl-C, so brokers started here are stopped.
    sigterm_unwinds()
    available = _suites()
    chosen = list(suites) or available
    unknown = sorted(set(chosen) - set(available))
    if unknown:
        raise click.UsageError(f"unknown suite(s) {', '.join(unknown)}; available: {', '.join(available)}")
    figures: list[Figure] = []
    for name in chosen:
        click.echo(f"== {name}{' (quick)' if quick else ''}", err=True)
        started = time.perf_counter()
        module = importlib.import_module(f"bench.bench_{name}")
        figures.extend(module.run(quick=quick))
        click.echo(f"   {name} took {time.perf_counter() - started:.1f} s", err=True)
    json_path, md_path = write_results(figures, out)
    click.echo(markdown_table(figures))
    click.echo(f"results: {json_path} and {md_path}", err=True)
    if any(f.goal_met is False for f in figures):
        click.echo("some goals were not met (marked NO)", err=True)


if __name__ == "__main__":
    sys.exit(main())
