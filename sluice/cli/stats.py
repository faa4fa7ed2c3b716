"""`sluice stats …`: the core's statistics at the terminal.

Each subcommand reads JSON on stdin or flags, calls `sluice.core`, and prints a text table
(or JSON with `--json`). Bad input is a one-line `click.UsageError`-style message naming
the field.
"""

from __future__ import annotations

import click

from sluice.cli.stats_tests import compare_command, decide_command, power_command
from sluice.cli.stats_thompson import thompson_command


@click.group()
def stats() -> None:
    """Statistics of the decision core: Thompson probabilities, tests, power, decisions."""


stats.add_command(thompson_command)
stats.add_command(compare_command)
stats.add_command(power_command)
stats.add_command(decide_command)
