"""Scenario files of the simulator: mistakes are named, not raised as TypeErrors."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.simulator import Scenario, ScenarioError, load_specs
from sluice.config import project_root

DEMO = project_root() / "examples" / "demo"


def specs():
    return load_specs([DEMO / "ranking.yaml", DEMO / "checkout_ab.yaml", DEMO / "models.yaml"])


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
    ("rates: {demo-checkout-ab: {shop: {control: 0.1, green: 0.1}}}\nmodels: {demo-checkout-ab: {shop: {fresh: 0.1}}}\n",
     "models.demo-checkout-ab: no experiment of that id takes model versions"),
    ("rates: {demo-models: {site-north: {popular: 0.1, recent: 0.1}}}\nmodels: {demo-models: {site-west: {fresh: 0.1}}}\n",
     "entities ['site-west'] have no `rates`"),
    ("rates: {}\nmodels: {demo-models: {site-north: {fresh: 0.1, half_life: 3}}}\n", "models.demo-models.site-north: expected"),
    ("rates: {}\nmodels: {demo-models: {site-north: {fresh: 1.5}}}\n", "site-north.fresh: must be in [0, 1]"),
])
def test_bad_scenarios_are_named(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(ScenarioError) as err:
        Scenario.load(path, specs())
    assert words in str(err.value)


def test_a_model_version_gets_stale_with_the_age_of_its_data_and_a_retrained_one_recovers() -> None:
    scenario = Scenario.load(DEMO / "scenario.yaml", specs())
    decay = scenario.models["demo-models"]["site-north"]
    rates = [decay.rate(age) for age in (0, 2, 4, 8, 30)]
    assert rates[0] == decay.fresh and rates == sorted(rates, reverse=True)
    assert rates[-1] == pytest.approx(decay.fresh * decay.floor)  # never below its floor
    # At the start, version 1's data is 3 days old: it still beats the heuristics, and a
    # version trained on fresh data beats it by more than a quarter.
    assert decay.rate(3) > max(scenario.rates["demo-models"]["site-north"].values())
    assert decay.rate(0) > 1.25 * decay.rate(4)
