"""The experiment spec: the examples load, and every bad spec says which field and value."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
from pydantic import ValidationError

from sluice.avro import SingleObjectSerde
from sluice.core.allocation import allocate
from sluice.core.decisions import DecisionCriteria
from sluice.core.guardrails import GuardrailConfig
from sluice.core.spec import SpecError, load_spec, spec_from_json, spec_from_mapping
from sluice.specfile import load_spec_file

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*.yaml"))

MINIMAL = """
id: exp-1
salt: exp-1-salt
unit: user_id
parameters:
  - {name: model, type: string}
  - {name: depth, type: integer}
arms:
  - {name: control, values: {model: m1, depth: 3}}
  - {name: treatment, values: {model: m2, depth: 5}}
default_arm: control
policy: {name: static, params: {}}
reward: {type: binary, name: click}
"""


def test_there_are_examples_of_each_kind() -> None:
    specs = [load_spec_file(p) for p in EXAMPLES]
    assert len(specs) >= 3
    assert {s.policy.name for s in specs} >= {"thompson", "static"}
    assert {s.reward.type for s in specs} == {"binary", "continuous"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_loads_and_survives_a_json_round_trip(path: Path) -> None:
    spec = load_spec_file(path)
    assert spec.default_arm in spec.arm_names
    again = spec_from_mapping(json.loads(spec.model_dump_json()))
    assert again == spec


def test_the_thompson_example_is_the_advertiser_bandit() -> None:
    spec = load_spec_file(next(p for p in EXAMPLES if p.name == "ranking_thompson.yaml"))
    assert spec.policy.name == "thompson" and spec.reward.type == "binary"
    assert 3 <= len(spec.arms) <= 4 and spec.entity == "advertiser_id" and spec.entities
    assert spec.window_ms == 7 * 24 * 3_600_000


def test_defaults_fill_the_optional_fields() -> None:
    spec = load_spec(MINIMAL)
    assert spec.status == "draft" and spec.spec_version == 1
    assert spec.num_buckets == 10_000 and spec.traffic_fraction == 1.0 and spec.layer is None
    assert spec.window_days == 7 and spec.window_ms == 604_800_000
    assert spec.reward.attribution_window_hours == 24 and spec.reward.attribution_window_ms == 86_400_000
    assert spec.guardrails == GuardrailConfig() and spec.criteria == DecisionCriteria()
    assert spec.arm_index("treatment") == 1


def test_the_spec_is_frozen() -> None:
    spec = load_spec(MINIMAL)
    with pytest.raises(ValidationError):
        spec.salt = "other"  # type: ignore[misc]


def test_the_assigner_uses_the_spec_salt_arms_and_traffic() -> None:
    spec = load_spec(MINIMAL + "traffic_fraction: 0.5\nnum_buckets: 100\n")
    assigner = spec.assigner(allocate([0.5, 0.5], 100))
    assert (assigner.salt, assigner.arms, assigner.default_arm, assigner.traffic_fraction) == (
        "exp-1-salt",
        ("control", "treatment"),
        "control",
        0.5,
    )
    with pytest.raises(SpecError, match="allocation has 10000 buckets"):
        spec.assigner(allocate([0.5, 0.5], 10_000))


def mutate(old: str, new: str) -> str:
    assert old in MINIMAL
    return MINIMAL.replace(old, new)


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        (mutate("depth: 5}", "depth: deep}"), ["arms[1] ('treatment').values.depth", "expected an integer", "'deep'"]),
        (mutate("{model: m2, depth: 5}", "{model: m2}"), ["arms[1] ('treatment').values", "missing parameter(s) ['depth']"]),
        (mutate("depth: 3}", "depth: 3, colour: red}"), ["arms[0] ('control').values", "undeclared parameter(s) ['colour']"]),
        (mutate("name: treatment", "name: control"), ["arms: arm names must be unique", "['control']"]),
        (
            mutate("{name: depth, type: integer}", "{name: model, type: integer}"),
            ["parameters: parameter names must be unique"],
        ),
        (mutate("default_arm: control", "default_arm: nobody"), ["default_arm: 'nobody' is not an arm"]),
        (mutate("salt: exp-1-salt", "salt: 'exp:1'"), ["salt: String should match pattern", "'exp:1'"]),
        (mutate("type: binary", "type: ternary"), ["reward.type:", "'ternary'"]),
        (
            mutate("name: click}", "name: click, attribution_window_hours: 0}"),
            ["reward.attribution_window_hours", "greater than 0", "0 is given"],
        ),
        (MINIMAL + "window_days: -1\n", ["window_days: Input should be greater than 0, but -1 is given"]),
        (MINIMAL + "traffic_fraction: 1.5\n", ["traffic_fraction", "1.5 is given"]),
        (MINIMAL + "traffic_fraction: 0.00001\n", ["traffic_fraction: 1e-05 of 10000 buckets rounds to 0"]),
        (MINIMAL + "status: live\n", ["status", "'live'"]),
        (MINIMAL + "colour: blue\n", ["colour: unknown field (value 'blue')"]),
        (MINIMAL + "guardrails: {floor: 0.6, cap: 0.5}\n", ["guardrails: floor (0.6) must be <= cap (0.5)"]),
        (MINIMAL + "guardrails: {pins: {ghost: 0}}\n", ["guardrails: pins names unknown arm(s) ['ghost']"]),
        (MINIMAL + "criteria: {confidence: 2}\n", ["criteria.confidence", "2 is given"]),
        (MINIMAL + "layer: {name: checkout, start: 10, end: 5}\n", ["layer: slice [10, 5)"]),
        (MINIMAL + "entities: [adv-1]\n", ["entities: a list of entities needs the entity field name"]),
        (MINIMAL.replace("unit: user_id\n", ""), ["unit: required field is missing"]),
    ],
)
def test_invalid_specs_name_the_field_and_the_value(text: str, fragments: list[str]) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(text)
    message = str(info.value)
    assert message.startswith("experiment spec 'exp-1' is invalid:")
    for fragment in fragments:
        assert fragment in message


def test_all_problems_are_reported_at_once() -> None:
    with pytest.raises(SpecError) as info:
        load_spec(MINIMAL + "window_days: 0\ntraffic_fraction: 2\n")
    assert [p.split(":")[0] for p in info.value.problems] == ["window_days", "traffic_fraction"]
    cross_field = mutate("default_arm: control", "default_arm: nobody").replace("{model: m2, depth: 5}", "{model: m2}")
    with pytest.raises(SpecError) as info:
        load_spec(cross_field)
    assert len(info.value.problems) == 2


def test_yaml_errors_name_the_line() -> None:
    with pytest.raises(SpecError, match="not valid YAML at line 2, column 8: mapping values are not allowed"):
        load_spec("id: x\nsalt: a: b\n")
    with pytest.raises(SpecError, match="must be a mapping of fields, but a list"):
        load_spec("- a\n- b\n")


def test_a_spec_file_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(mutate("default_arm: control", "default_arm: nobody"))
    with pytest.raises(SpecError, match=r"bad\.yaml: experiment spec 'exp-1' is invalid"):
        load_spec_file(path)
    with pytest.raises(SpecError, match="cannot read experiment spec"):
        load_spec_file(tmp_path / "missing.yaml")


def test_the_spec_fits_the_avro_contract_and_comes_back_whole(serde: SingleObjectSerde) -> None:
    spec = load_spec_file(next(p for p in EXAMPLES if p.name == "checkout_ab.yaml"))
    record = spec.record_fields() | {"event_id": "e-1", "updated_at": 1_700_000_000_000}
    decoded = serde.decode(serde.encode("io.sluice.ExperimentSpec", record)).record
    assert decoded["status"] == "DRAFT" and decoded["reward_type"] == "BINARY" and decoded["layer"] == "checkout"
    assert decoded["arms"][1] == {"name": "green", "values": {"checkout.button_colour": '"green"'}}
    assert decoded["attribution_window_ms"] == 48 * 3_600_000
    assert spec_from_mapping(json.loads(decoded["spec_json"])) == spec


def test_policy_parameters_are_checked_by_the_policy_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    # Stands in for sluice.core.policies so the wiring is tested whatever the registry holds.
    calls = []

    def validate_policy_params(name: str, params: dict) -> None:
        calls.append((name, dict(params)))
        if "epsilon" in params and not 0 <= params["epsilon"] <= 1:
            raise ValueError(f"epsilon must be in [0, 1], but {params['epsilon']} is given")

    registry = types.SimpleNamespace(validate_policy_params=validate_policy_params)
    monkeypatch.setitem(sys.modules, "sluice.core.policies", registry)
    load_spec(MINIMAL)
    assert calls == [("static", {})]
    with pytest.raises(SpecError) as info:
        load_spec(mutate("policy: {name: static, params: {}}", "policy: {name: epsilon_greedy, params: {epsilon: 2}}"))
    assert "policy: epsilon must be in [0, 1], but 2 is given" in str(info.value)


def scoped(**arm_c: object) -> dict:
    """Three arms; `c` is a model some entities have (its fields from `arm_c`)."""
    data = load_spec(MINIMAL).model_dump(mode="json")
    data["entity"] = "advertiser"
    data["arms"].append({"name": "c", "values": {"model": "m3", "depth": 4}, **arm_c})
    return data


def test_an_arm_offered_to_some_entities_is_theirs_alone() -> None:
    spec = spec_from_mapping(scoped(entities=["acme"]))
    assert spec.arms_of("acme") == ("control", "treatment", "c")
    assert spec.arms_of("globex") == ("control", "treatment")
    view = spec.for_entity("globex")
    assert view.arm_names == ("control", "treatment") and view.spec_version == spec.spec_version
    assert spec.for_entity("acme").arm_names == spec.arm_names
    plain = load_spec(MINIMAL)
    assert plain.for_entity("x") is plain  # nothing scoped: the same spec, no copy


def test_a_pin_on_an_arm_of_some_entities_applies_to_them_only() -> None:
    from sluice.core.guardrails import apply_guardrails

    spec = spec_from_mapping(scoped(entities=["acme"]) | {"guardrails": {"pins": {"c": 0.1}}})
    globex = spec.for_entity("globex")
    assert globex.guardrails.pins == {} and spec.for_entity("acme").guardrails.pins == {"c": 0.1}
    result = apply_guardrails([0.5, 0.5], globex.guardrails, arms=globex.arm_names)  # no unknown-arm error
    assert result.weights.tolist() == [0.5, 0.5]


def test_adding_an_arm_for_one_entity_changes_nothing_the_others_see() -> None:
    before = spec_from_mapping(scoped(entities=["acme"]))
    after = spec_from_mapping(scoped(entities=["acme", "initech"]) | {"spec_version": 2})
    assert before.same_for_entity(after, "globex")
    assert before.same_for_entity(after, "acme")
    assert not before.same_for_entity(after, "initech")


@pytest.mark.parametrize(("change", "message"), [
    ({"entities": []}, "list at least one entity"),
    ({"entities": ["acme", "acme"]}, "an entity is listed twice"),
])
def test_an_arm_s_entity_list_must_name_entities(change: dict, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        spec_from_mapping(scoped(**change))


def test_entity_lists_that_cannot_hold_are_refused() -> None:
    no_entity = scoped(entities=["acme"])
    del no_entity["entity"]
    with pytest.raises(SpecError, match="needs the entity field name"):
        spec_from_mapping(no_entity)
    with pytest.raises(SpecError, match=r"\['globex'\] are not entities of the experiment"):
        spec_from_mapping(scoped(entities=["globex"]) | {"entities": ["acme"]})
    data = scoped()
    data["arms"][0]["entities"] = ["acme"]
    with pytest.raises(SpecError, match="the default arm is served to every entity"):
        spec_from_mapping(data)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_a_json_body_is_validated_without_coercing_types(path: Path) -> None:
    spec = load_spec_file(path)
    assert spec_from_json(spec.model_dump_json()) == spec
    data = json.loads(spec.model_dump_json())
    assert spec_from_mapping({**data, "num_buckets": "100"}).num_buckets == 100  # YAML and Python data: coerced
    for field, value in [("num_buckets", "100"), ("num_buckets", 100.5), ("traffic_fraction", "0.5"), ("unit", 5)]:
        with pytest.raises(SpecError, match=f"{field}: Input should be a valid"):
            spec_from_json(json.dumps({**data, field: value}))
