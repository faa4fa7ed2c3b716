"""New model versions enter an experiment as arms of their entity, and retired ones leave."""

from __future__ import annotations

import pytest

from sluice.core.lifecycle import next_arm_version, takes, with_model_version, without_model_version
from sluice.core.spec import SpecError, spec_from_mapping
from sluice.models import ModelRegistryError, ModelVersion


def ranking(**extra: object) -> dict:
    return {
        "id": "ranking", "status": "running", "salt": "s", "unit": "user_id", "entity": "advertiser",
        "parameters": [{"name": "model", "type": "string"}, {"name": "depth", "type": "integer"}],
        "arms": [{"name": "baseline", "values": {"model": "s3://m/baseline", "depth": 3}},
                 {"name": "gbdt-v1", "values": {"model": "s3://m/gbdt/1", "depth": 3}}],
        "default_arm": "baseline", "policy": {"name": "thompson", "params": {}},
        "reward": {"type": "binary", "name": "click"},
        "models": {"parameter": "model", "model_types": ["gbdt"], "entry": {"weight": 0.05, "until_observations": 300}},
        **extra,
    }


def test_a_registered_version_enters_as_an_arm_of_its_entity_only() -> None:
    spec = spec_from_mapping(ranking())
    new = with_model_version(spec, "acme", "gbdt", 7, "s3://m/gbdt/7", "gbdt v7 for acme")
    assert new is not None and new.spec_version == spec.spec_version + 1
    arm = new.arms[-1]
    assert (arm.name, arm.entities, arm.values) == ("gbdt-v7", ("acme",), {"model": "s3://m/gbdt/7", "depth": 3})
    assert (arm.entry.weight, arm.entry.until_observations) == (0.05, 300)
    assert new.arms_of("globex") == ("baseline", "gbdt-v1")
    again = with_model_version(new, "globex", "gbdt", 7, "s3://m/gbdt/7")  # a group job's version, second entity
    assert again is not None and again.arms[-1].entities == ("acme", "globex")
    assert with_model_version(again, "acme", "gbdt", 7, "s3://m/gbdt/7") is None  # offered already


def test_an_experiment_takes_only_the_model_types_and_entities_it_names() -> None:
    spec = spec_from_mapping(ranking(entities=["acme", "globex"]))
    assert with_model_version(spec, "acme", "two-tower", 1, "s3://x") is None
    assert with_model_version(spec, "initech", "gbdt", 2, "s3://x") is None
    assert not takes(spec_from_mapping(ranking(status="stopped")), "acme", "gbdt")
    plain = ranking()
    del plain["models"]
    assert with_model_version(spec_from_mapping(plain), "acme", "gbdt", 2, "s3://x") is None


def test_a_retired_version_leaves_its_entity_and_the_arm_goes_with_its_last_entity() -> None:
    spec = with_model_version(spec_from_mapping(ranking()), "acme", "gbdt", 7, "s3://m/gbdt/7")
    spec = with_model_version(spec, "globex", "gbdt", 7, "s3://m/gbdt/7")
    data = spec.model_dump(mode="json")
    data["health"]["retired"] = [{"arm": "gbdt-v7", "entity": "globex", "at_ms": 1}]
    spec = spec_from_mapping(data)
    one = without_model_version(spec, "acme", "gbdt", 7)
    assert one is not None and one.arms[-1].entities == ("globex",)
    assert without_model_version(one, "acme", "gbdt", 7) is None
    gone = without_model_version(one, "globex", "gbdt", 7)
    assert gone is not None and "gbdt-v7" not in gone.arm_names and not gone.health.retired


def test_arms_that_cannot_leave_say_why() -> None:
    spec = spec_from_mapping(ranking())
    with pytest.raises(SpecError, match="offered to every entity"):
        without_model_version(spec, "acme", "gbdt", 1)


def test_the_model_parameter_must_be_a_declared_string() -> None:
    with pytest.raises(SpecError, match="models.parameter: 'depth' must be a declared string parameter"):
        spec_from_mapping(ranking(models={"parameter": "depth"}))


def version(**change: object) -> ModelVersion:
    fields = {"entity": "acme", "model_type": "gbdt", "version": 3, "trained_at_ms": 10, "data_start_ms": 0,
              "data_end_ms": 5, "rows": 1000, "dataset_fingerprint": "sha256:ab", "feature_set": "clicks",
              "feature_set_version": "2", "artifact_uri": "s3://m/gbdt/3"} | change
    return ModelVersion(**fields)


def test_a_model_version_round_trips_its_record_and_names_bad_fields() -> None:
    v = version(metrics={"auc": 0.71})
    assert ModelVersion.from_record(v.record()) == v and v.arm == "gbdt-v3"
    for change, message in (({"model_type": "gb dt"}, "model_type 'gb dt' must be a name"),
                            ({"version": 0}, "version must be >= 1"),
                            ({"data_start_ms": 9}, "data_start .9. is after data_end .5."),
                            ({"artifact_uri": ""}, "artifact_uri must not be empty"),
                            ({"status": "live"}, "status must be one of candidate, serving, retired")):
        with pytest.raises(ModelRegistryError, match=message):
            version(**change)


def test_a_new_version_number_never_takes_an_arm_name_in_use() -> None:
    spec = spec_from_mapping(ranking())
    assert next_arm_version([spec], "gbdt") == 2  # gbdt-v1 was made by hand
    assert next_arm_version([spec], "two-tower") == 1


def test_a_decision_that_retired_a_version_s_arm_retires_the_version() -> None:
    from sluice.core.lifecycle import Retirement, retirements

    spec = with_model_version(spec_from_mapping(ranking()), "acme", "gbdt", 7, "s3://m/gbdt/7")
    decision = {"entity": "acme", "verdict": "KILL", "rule": "futility", "winner": None,
                "changes": "retired gbdt-v7 for 'acme' (P(best) 0.001 < 0.01); retired baseline-x for 'acme' (...)"}
    assert retirements(decision, spec, {}, 0) == [
        Retirement("acme", "gbdt", 7, "its arm gbdt-v7 was retired by a KILL decision (futility)")]
    assert retirements({**decision, "changes": None}, spec, {}, 0) == []


def test_a_newer_version_that_won_after_serving_long_enough_retires_the_older_ones() -> None:
    from sluice.core.lifecycle import DAY_MS, retirements

    spec = with_model_version(spec_from_mapping(ranking()), "acme", "gbdt", 7, "s3://m/gbdt/7")
    ship = {"entity": "acme", "verdict": "SHIP", "rule": "probability_best", "winner": "gbdt-v7", "changes": "shipped"}
    young = retirements(ship, spec, {"gbdt-v7": 0}, 2 * DAY_MS)  # replace_after_days is 3
    assert young == []
    (old,) = retirements(ship, spec, {"gbdt-v7": 0}, 4 * DAY_MS)
    assert (old.model_type, old.version) == ("gbdt", 1) and "replaced by gbdt-v7" in old.reason
    assert retirements({**ship, "entity": "globex"}, spec, {"gbdt-v7": 0}, 4 * DAY_MS) == []  # v7 is not globex's


def test_the_retired_arms_are_read_as_the_worker_writes_them() -> None:
    """The follower reads the sentence `act_on_decision` writes; this pins the two together."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from stream_support import bandit_spec

    from sluice.core.lifecycle import retirements
    from streams.publisher import act_on_decision
    from streams.state import EntityState

    data = bandit_spec("e1", ["baseline", "gbdt-v3"]).model_dump(mode="json")
    data |= {"decisions": "act", "models": {"parameter": "model"}}
    spec = spec_from_mapping(data)
    decision = {"entity": "x", "verdict": "KILL", "rule": "futility", "winner": None,
                "arm_actions": [{"arm": "gbdt-v3", "action": "STOP", "reason": "worse"},
                                {"arm": "baseline", "action": "KEEP", "reason": "control"}]}
    decision["changes"] = act_on_decision(EntityState(), spec, decision, 0)
    assert [(r.model_type, r.version) for r in retirements(decision, spec, {}, 0)] == [("gbdt", 3)]
