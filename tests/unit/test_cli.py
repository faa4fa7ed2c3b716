"""The `sluice` command: every subcommand answers --help; errors are one clear line."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from sluice.cli import main


def all_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = [prefix]
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            out += all_commands(cmd, prefix + (name,))
        else:
            out.append(prefix + (name,))
    return out


@pytest.mark.parametrize("path", all_commands(main), ids=lambda p: " ".join(p) or "sluice")
def test_every_command_has_help(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_the_foundation_commands_exist() -> None:
    paths = {" ".join(p) for p in all_commands(main)}
    assert {"db migrate", "topics create", "topics list", "up", "down", "demo", "simulate", "worker",
            "experiments apply"} <= paths


def test_topics_create_without_any_kafka_says_how_to_get_one(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["topics", "create"], env={"KAFKA_BOOTSTRAP": "", "SLUICE_HOME": str(tmp_path)})
    assert result.exit_code == 1
    assert "set KAFKA_BOOTSTRAP or start the local stack" in result.output
    assert "Traceback" not in result.output
