"""Scenario files of the simulator: mistakes are named, not raised as TypeErrors."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.simulator import Scenario, ScenarioError, load_specs
from sluice.config import project_root

DEMO = project_root() / "examples" / "demo"


def specs():
    return load_specs([DEMO / "ranking.yaml", DEMO / "checkout_ab.yaml"])


def test_the_demo_scenario_loads() -> None:
    scenario = Scenario.load(DEMO / "scenario.yaml", specs())
    assert scenario.best("demo-ranking", "adv-acme", 0.0) == "two-tower-v3"
    assert scenario.best("demo-ranking", "adv-acme", 1.0) == "transformer-v1"


@pytest.mark.parametrize("text, words", [
    ("rates: {}\nspeed: 3\n", "unknown field(s) ['speed']"),
    ("rates: {nope: {e: {a: 0.1}}}\n", "rates.nope: no such experiment"),
    ("rates: {demo-checkout-ab: {shop: {control: 0.1}}}\n", "the arms are ['control', 'green']"),
    ("rates: {demo-checkout-ab: {shop: {control: 0.1, green: 2}}}\n", "must be in [0, 1]"),
    ("days: 3\n", "a scenario needs `rates"),
])
def test_bad_scenarios_are_named(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(ScenarioError) as err:
        Scenario.load(path, specs())
    assert words in str(err.value)
