"""`get(parameter)` answers whatever state or kind of test sets the parameter, and the
spec's entity list is enforced, without a broker (specs and tables from a snapshot)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from sluice.client.sdk import AssignmentRequestError, SluiceClient, UnknownNameError
from sluice.core.allocation import Allocation
from sluice.core.spec import ExperimentSpec, spec_from_mapping
from sluice.kafka.clients import entity_key


def ranking(exp: str = "exp", *, status: str = "running", layer: dict[str, Any] | None = None,
            entities: list[str] | None = None) -> ExperimentSpec:
    return spec_from_mapping({
        "id": exp, "status": status, "salt": f"{exp}-salt", "unit": "user_id", "entity": "site",
        "entities": entities, "layer": layer, "parameters": [{"name": "ranking.model", "type": "string"}],
        "arms": [{"name": a, "values": {"ranking.model": f"{exp}-{a}"}} for a in "ab"], "default_arm": "a",
        "policy": {"name": "thompson"}, "reward": {"type": "binary", "name": "click"},
    })


def client(tmp_path: Path, *specs: ExperimentSpec) -> SluiceClient:
    """Every experiment has a table for site-1 that gives all traffic to b."""
    tables = {entity_key(s.id, "site-1").decode(): {"version": 2, "num_buckets": s.num_buckets,
                                                    "arms": Allocation.contiguous([0, s.num_buckets]).to_arm_weights(["a", "b"])}
              for s in specs}
    (tmp_path / "t.snapshot.json").write_bytes(orjson.dumps({
        "specs": {s.id: s.model_dump(mode="json") for s in specs}, "tables": tables}))
    return SluiceClient(prefix="t", state_dir=tmp_path, delivery=None)


@pytest.mark.parametrize("status", ["paused", "stopped", "draft"])
def test_a_parameter_of_an_experiment_not_running_is_its_default_arms_value(tmp_path, status) -> None:
    value = client(tmp_path, ranking(status=status)).get("ranking.model", "user-1", "site-1")
    assert (value.value, value.assignment.source, value.assignment.in_experiment) == ("exp-a", "default", False)


def test_a_running_experiment_answers_from_its_table(tmp_path) -> None:
    value = client(tmp_path, ranking()).get("ranking.model", "user-1", "site-1")
    assert (value.value, value.assignment.source) == ("exp-b", "snapshot")


def test_two_running_experiments_on_disjoint_layers_share_a_parameter(tmp_path) -> None:
    left = ranking("left", layer={"name": "rank", "start": 0, "end": 5000})
    right = ranking("right", layer={"name": "rank", "start": 5000, "end": 10000})
    c = client(tmp_path, left, right)
    answers = {c.get("ranking.model", f"user-{i}", "site-1").assignment.experiment for i in range(400)}
    assert answers == {"left", "right"}  # each unit goes to the experiment whose slice holds it
    for i in range(100):
        v = c.get("ranking.model", f"user-{i}", "site-1")
        assert v.value == f"{v.assignment.experiment}-b"


def test_two_running_experiments_on_the_same_units_are_ambiguous(tmp_path) -> None:
    c = client(tmp_path, ranking("one"), ranking("two"))
    with pytest.raises(AssignmentRequestError, match=r"set by experiments \['one', 'two'\] that share unit"):
        c.get("ranking.model", "user-1", "site-1")
    assert c.get("ranking.model", "user-1", "site-1", experiment="two").value == "two-b"


def test_an_unknown_parameter_and_an_entity_outside_the_list(tmp_path) -> None:
    c = client(tmp_path, ranking(entities=["site-1", "site-2"]))
    with pytest.raises(UnknownNameError, match="no experiment sets parameter 'nope'"):
        c.get("nope", "user-1", "site-1")
    with pytest.raises(AssignmentRequestError, match=r"entity 'site-9' is not one of experiment 'exp'"):
        c.assign("exp", "user-1", "site-9")
    assert c.assign("exp", "user-1", "site-2").source == "default"  # listed, no table yet
