"""New models enter an experiment as arms of their entity, and retired ones leave it.

Pure functions from one spec to the next (None when nothing changes); whoever registers or
retires a model version publishes what they return (`sluice models register/retire`, the
lifecycle follower). An experiment takes models only if its spec has a `models` section
naming the parameter that carries the model (`ModelArms`).

A version's arm is `<model type>-v<version>`, offered only to the entities the version was
registered for (`ArmSpec.entities`), with the experiment's `models.entry`: it serves at a
small fixed weight until it has enough observations for the policy to judge it. Its values
are the default arm's, with the model parameter set to the version's artifact URI.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from sluice.core.spec import ExperimentSpec, SpecError, spec_from_mapping

DAY_MS = 86_400_000
# How a Decision's `changes` names an arm the worker retired for its entity
# (`streams.publisher.act_on_decision` writes "retired <arm> for '<entity>' (<why>)").
_RETIRED = re.compile(r"retired (\S+) for ")


def arm_name(model_type: str, version: int) -> str:
    return f"{model_type}-v{version}"


def parse_arm(name: str) -> tuple[str, int] | None:
    """(model type, version) of a version's arm name, None for other arms."""
    model_type, sep, number = name.rpartition("-v")
    return (model_type, int(number)) if sep and model_type and number.isdigit() else None


@dataclass(frozen=True)
class Retirement:
    """A model version a decision retires for its entity, and why."""

    entity: str
    model_type: str
    version: int
    reason: str


def retirements(decision: Mapping[str, object], spec: ExperimentSpec, entered_at_ms: Mapping[str, int],
                now_ms: int) -> list[Retirement]:
    """The model versions a Decision record retires for its entity:

    - every version whose arm the decision retired (a KILL or a losing arm under `decisions:
      act`), as its `changes` say;
    - on SHIP of a version that has served `models.replace_after_days` or longer (since
      `entered_at_ms[arm]`), the older versions of its type still offered to the entity.
    """
    entity = decision.get("entity")
    if spec.models is None or not isinstance(entity, str):
        return []
    verdict, rule = decision.get("verdict"), decision.get("rule")
    out = []
    for arm in _RETIRED.findall(str(decision.get("changes") or "")):
        parsed = parse_arm(arm)
        if parsed is not None:
            out.append(Retirement(entity, *parsed, f"its arm {arm} was retired by a {verdict} decision ({rule})"))
    winner = decision.get("winner")
    parsed = parse_arm(winner) if verdict == "SHIP" and isinstance(winner, str) else None
    if parsed is not None and winner in entered_at_ms and winner in spec.arms_of(entity):
        served_days = (now_ms - entered_at_ms[winner]) / DAY_MS
        if served_days >= spec.models.replace_after_days:
            for arm in spec.arms_of(entity):
                older = parse_arm(arm)
                if older is not None and older[0] == parsed[0] and older[1] < parsed[1]:
                    out.append(Retirement(entity, *older, f"replaced by {winner}, which won ({rule}) after "
                                                          f"serving {served_days:.1f} days"))
    return out


def next_arm_version(specs: list[ExperimentSpec], model_type: str) -> int:
    """One above the highest version of `model_type` any experiment has an arm of (arms
    named `<type>-v<N>`, also those made by hand), so a new version never takes a name in use."""
    prefix = f"{model_type}-v"
    numbers = [int(a[len(prefix):]) for s in specs for a in s.arm_names
               if a.startswith(prefix) and a[len(prefix):].isdigit()]
    return 1 + max(numbers, default=0)


def takes(spec: ExperimentSpec, entity: str, model_type: str) -> bool:
    """Whether `spec` takes versions of `model_type` for `entity` as arms."""
    m = spec.models
    return (m is not None and spec.status != "stopped" and (m.model_types is None or model_type in m.model_types)
            and (spec.entities is None or entity in spec.entities))


def with_model_version(spec: ExperimentSpec, entity: str, model_type: str, version: int,
                       artifact_uri: str, description: str = "") -> ExperimentSpec | None:
    """`spec` with the version's arm offered to `entity` (the arm made if new), or None when
    the experiment does not take it or offers it already."""
    if not takes(spec, entity, model_type):
        return None
    name = arm_name(model_type, version)
    data = spec.model_dump(mode="json")
    arm = next((a for a in data["arms"] if a["name"] == name), None)
    if arm is not None:
        if arm["entities"] is None or entity in arm["entities"]:
            return None
        arm["entities"].append(entity)
    else:
        default = next(a for a in data["arms"] if a["name"] == spec.default_arm)
        data["arms"].append({"name": name, "values": {**default["values"], spec.models.parameter: artifact_uri},
                             "description": description, "entities": [entity],
                             "entry": spec.models.model_dump(mode="json")["entry"]})
    return spec_from_mapping({**data, "spec_version": spec.spec_version + 1})


def without_model_version(spec: ExperimentSpec, entity: str, model_type: str, version: int) -> ExperimentSpec | None:
    """`spec` with the version's arm no longer offered to `entity` (the arm gone when no
    entity is left), or None when it was not offered to it. The worker holds an arm that
    left at 0, so its buckets go to the others at the next table."""
    name = arm_name(model_type, version)
    data = spec.model_dump(mode="json")
    arm = next((a for a in data["arms"] if a["name"] == name), None)
    if arm is None or (arm["entities"] is not None and entity not in arm["entities"]):
        return None
    if name == spec.default_arm:
        raise SpecError(f"{name} is experiment {spec.id!r}'s default arm and cannot leave; choose another default first")
    if arm["entities"] is None:
        raise SpecError(f"arm {name} of experiment {spec.id!r} is offered to every entity; retire it for "
                        f"{entity!r} with `sluice experiments retire` instead")
    arm["entities"].remove(entity)
    if not arm["entities"]:  # the arm goes, and what named it
        data["arms"].remove(arm)
        for kind in ("retired", "reinstated"):
            data["health"][kind] = [r for r in data["health"][kind] if r["arm"] != name]
        data["guardrails"]["pins"].pop(name, None)
        if data["guardrails"]["warmup_weights"]:
            data["guardrails"]["warmup_weights"].pop(name, None)
            data["guardrails"]["warmup_weights"] = data["guardrails"]["warmup_weights"] or None
    return spec_from_mapping({**data, "spec_version": spec.spec_version + 1})
