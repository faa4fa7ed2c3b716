"""What each change makes of a published spec (shared by `sluice experiments` and the control
API), and how the worker's health step holds an arm retired by hand until it is reinstated."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from sluice.core.spec import SpecError
from sluice.errors import SluiceError
from sluice.experiments import ExperimentNotFoundError, applied, with_reinstatement, with_retirement, with_status
from streams import health
from streams.state import EntityState

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from stream_support import bandit_spec  # noqa: E402


def test_apply_creates_bumps_the_version_of_a_change_and_keeps_an_unchanged_spec() -> None:
    v1 = bandit_spec("exp", ["a", "b"])
    assert applied(None, v1) == ("created", v1)
    assert applied(v1, v1.model_copy(update={"spec_version": 7})) == ("unchanged", v1)
    outcome, v2 = applied(v1, v1.model_copy(update={"description": "more traffic"}))
    assert outcome == "updated" and v2.spec_version == 2 and v2.description == "more traffic"


def test_an_explicit_version_of_a_change_must_be_higher_than_the_published_one() -> None:
    v3 = bandit_spec("exp", ["a", "b"], spec_version=3)
    with pytest.raises(SluiceError, match="published at spec_version 3.*but 3 is given"):
        applied(v3, v3.model_copy(update={"description": "x"}), explicit_version=True)
    assert applied(v3, v3.model_copy(update={"description": "x", "spec_version": 5}), explicit_version=True)[1].spec_version == 5


def test_a_status_change_is_a_new_version_and_the_same_status_is_none() -> None:
    running = bandit_spec("exp", ["a", "b"])
    paused = with_status(running, "paused")
    assert (paused.status, paused.spec_version) == ("paused", 2)
    assert with_status(paused, "paused") is paused


def test_retiring_records_the_arm_and_refuses_the_default_arm_and_unknown_arms() -> None:
    spec = bandit_spec("exp", ["a", "b", "c"])
    retired = with_retirement(spec, "b", "site-1", 1_000)
    assert retired.spec_version == 2 and retired.health.is_retired("b", "site-1")
    assert not retired.health.is_retired("b", "site-2")
    with pytest.raises(SpecError, match="default arm 'a' cannot be retired"):
        with_retirement(spec, "a", None, 1_000)
    with pytest.raises(ExperimentNotFoundError, match="no arm 'z'; the arms are \\['a', 'b', 'c'\\]"):
        with_retirement(spec, "z", None, 1_000)
    back = with_reinstatement(retired, "b", None, 2_000)
    assert not back.health.is_retired("b", "site-1")


def test_the_worker_holds_a_retired_arm_at_zero_for_its_entity_until_reinstated() -> None:
    retired = with_retirement(bandit_spec("exp", ["a", "b", "c"]), "b", "site-1", 1_000)
    state, other = EntityState(), EntityState()
    alerts = health.retire(state, retired, "site-1", 1_500)
    assert [(a["arm"], a["action"]) for a in alerts] == [("b", "retire")]
    assert health.pins(state, retired)[0] == {"b": 0.0}
    assert health.retire(state, retired, "site-1", 1_600) == []  # once per retirement
    assert health.retire(other, retired, "site-2", 1_500) == [] and health.pins(other, retired)[0] == {}
    back = with_reinstatement(retired, "b", "site-1", 2_000)
    lifted = health.lift(state, back, "site-1", 2_500)
    assert [(a["arm"], a["action"]) for a in lifted] == [("b", "reinstate")]
    assert health.retire(state, back, "site-1", 2_600) == [] and health.pins(state, back)[0] == {}
