"""The experiment specification every part of Sluice shares, and its YAML loader.

A spec names the experiment and its randomization unit, declares the parameters an
application reads and the arms (one value for every parameter), and says how traffic is
split (salt, buckets, traffic fraction, layer), which policy sets the weights, what the
reward is, which guardrails limit the weights and which criteria decide the outcome.

`load_spec(text)` parses YAML text (the caller reads the file; `sluice.specfile` does it
for a path) and `spec_from_mapping(data)` validates already-parsed data (the JSON of the
`ExperimentSpec` Avro record). Both raise `SpecError`, whose message names the field path,
the bad value and what was expected, one line per problem.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Literal

import yaml  # a pure parser: YAML text in, Python values out (no I/O here)
from pydantic import (BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, ValidationError, field_validator,
                      model_serializer, model_validator)

from sluice.core.allocation import DEFAULT_NUM_BUCKETS, MAX_NUM_BUCKETS, Allocation
from sluice.core.assignment import Assigner, LayerSlice, traffic_threshold
from sluice.core.decisions import DecisionCriteria
from sluice.core.errors import CoreInputError
from sluice.core.guardrails import GuardrailConfig, GuardrailError
from sluice.core.health import HealthConfig

# Ids and salts: no ":" or "/", so the hash key `salt:unit_id` is unambiguous and the
# derived salts (`salt/traffic`, `layer/name`) never equal an experiment's salt.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"
# Context keys under which the SDK and sidecar log a context feature set's values
# (`sluice.core.features.feature_key`): reserved, so no caller's own key is taken for one.
FEATURE_KEY_PREFIX = "sluice.fs:"
PARQUET_PLACEHOLDERS = ("entity", "date", "name", "version")
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS

Status = Literal["draft", "running", "paused", "stopped"]
ParameterType = Literal["string", "integer", "number", "boolean", "json"]
RewardType = Literal["binary", "continuous"]


class SpecError(CoreInputError):
    """An experiment spec that does not parse or validate; the message names every problem."""

    def __init__(self, message: str, problems: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.problems = problems or (message,)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ParameterSpec(_Frozen):
    """A configuration value the application reads (`ranking.model`); every arm sets it."""

    name: str = Field(min_length=1, max_length=200, description="parameter name, e.g. ranking.model")
    type: ParameterType = Field("string", description="type of the value every arm gives it")
    description: str = ""


class EntrySpec(_Frozen):
    """How a new arm (a newly trained model) enters: at a fixed small weight until it has
    enough observations for the policy to judge it, so one bad model costs little traffic
    and one lucky hour does not hand it the entity."""

    weight: float = Field(0.05, gt=0, lt=1, description="its weight while it enters")
    until_observations: int = Field(500, ge=1, description="observations (per entity) after which the policy decides")


class ArmSpec(_Frozen):
    """One candidate: a name and a value for every declared parameter."""

    name: str = Field(pattern=NAME_PATTERN, max_length=128)
    values: dict[str, Any] = Field(default_factory=dict, description="parameter name -> value")
    description: str = ""
    entities: tuple[str, ...] | None = Field(
        None, description="the entities this arm is offered to (a model trained for them); None: every entity")
    entry: EntrySpec | None = Field(None, description="a fixed small weight until it has enough observations")


class PolicySpec(_Frozen):
    """Which registered policy turns statistics into weights, and its parameters."""

    name: str = Field(min_length=1, description="registered policy name: static, thompson, epsilon_greedy, ucb1...")
    params: dict[str, Any] = Field(default_factory=dict)


class RewardSpec(_Frozen):
    """What counts as the reward of a serve."""

    type: RewardType = Field(description="binary: 0/1, counted at most once per serve; continuous: summed per serve")
    name: str = Field(min_length=1, description="the RewardEvent name that counts (click, conversion, revenue...)")
    attribution_window_hours: float = Field(24.0, gt=0, description="how long after a serve a reward still counts")

    @property
    def attribution_window_ms(self) -> int:
        return round(self.attribution_window_hours * HOUR_MS)


class LayerSpec(_Frozen):
    """The experiment's slice [start, end) of a layer's buckets; experiments of one layer
    must have disjoint slices (check a set of specs with `layer_conflicts`)."""

    name: str = Field(pattern=NAME_PATTERN, max_length=128)
    start: int = Field(ge=0)
    end: int = Field(gt=0)
    num_buckets: int = Field(DEFAULT_NUM_BUCKETS, ge=1, le=MAX_NUM_BUCKETS)

    @model_validator(mode="after")
    def _slice_fits(self) -> LayerSpec:
        if not self.start < self.end <= self.num_buckets:
            raise ValueError(
                f"slice [{self.start}, {self.end}) must satisfy start < end <= num_buckets ({self.num_buckets})"
            )
        return self

    def to_slice(self) -> LayerSlice:
        return LayerSlice(self.name, self.start, self.end, self.num_buckets)


_TARGET = re.compile(r"^(equal|live|published|always:.+|split:.+|policy:.+|current:.+|file:.+)$")


class OfflineEvaluation(_Frozen):
    """What the continuous offline evaluation estimates for each entity of the experiment:
    `targets` (None: an equal split, each arm alone and the live policy; the syntax of
    `sluice evaluate --target`), with `estimators`, over the last `window_days` of logs."""

    targets: tuple[str, ...] | None = None
    estimators: tuple[str, ...] = ("ips", "snips", "dr")
    window_days: float = Field(7.0, gt=0)

    @field_validator("targets")
    @classmethod
    def _known_targets(cls, targets: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for t in targets or ():
            if not _TARGET.match(t):
                raise ValueError(f"target {t!r} is not one of equal, live, published, always:ARM, split:A=W,..., "
                                 "policy:NAME[:JSON], current:NAME[:JSON], file:PATH.npy")
        return targets

    @field_validator("estimators")
    @classmethod
    def _known_estimators(cls, estimators: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(estimators) - {"ips", "snips", "dm", "dr", "switch-dr", "replay"})
        if unknown or not estimators:
            raise ValueError(f"estimators {unknown or '[]'} unknown; use ips, snips, dm, dr, switch-dr, replay")
        return estimators


class ModelArms(_Frozen):
    """Where new models become arms: a version registered for an entity (`sluice models
    register`) enters this experiment as an arm offered to that entity, and leaves it when
    retired (`sluice.core.lifecycle`)."""

    parameter: str = Field(min_length=1, description="the string parameter whose value names the model (its artifact URI)")
    model_types: tuple[str, ...] | None = Field(None, description="model types taken (None: every type)")
    entry: EntrySpec = Field(default_factory=EntrySpec, description="how a new version enters")
    replace_after_days: float = Field(
        3.0, ge=0, description="a version that wins (SHIP) after serving this long retires the older ones of its type")


class FeatureSource(_Frozen):
    """Where a feature set's values come from: exactly one of

    - `context`: columns of the context the caller passes with every assignment; the SDK and
      the sidecar log them under the feature set's reserved, versioned key instead of their
      own name, so only models that declare the set see them;
    - `parquet`: a path template with `{date}` (YYYY-MM-DD, the serve's UTC day) and
      usually `{entity}` (also `{name}`, `{version}`), one file per entity and day holding
      `key` (default `unit_id`: matched to the serve's unit id) and `columns`; joined by
      (entity, day, key) when the dataset is exported or a model trained, never at serve time.
    """

    context: tuple[str, ...] | None = Field(None, description="serve-context columns the caller passes")
    parquet: str | None = Field(None, min_length=1, description="path template of a file per entity and day")
    key: str | None = Field(None, min_length=1, description="parquet only: the file's column matched to the unit id")
    columns: tuple[str, ...] | None = Field(None, description="parquet only: the file's columns this set takes")

    @model_validator(mode="after")
    def _one_source(self) -> FeatureSource:
        if (self.context is None) == (self.parquet is None):
            raise ValueError("give either context: [columns] (values the caller passes with each assignment) or "
                             "parquet: PATH_TEMPLATE with columns (a file per entity and day), "
                             + ("not both" if self.context is not None else "but neither is given"))
        problems = []
        if self.context is not None:
            problems += _column_problems("context", self.context)
            problems += [f"{f}: only a parquet source has a {f}" for f in ("key", "columns")
                         if getattr(self, f) is not None]
            problems += [f"context: column {c!r} starts with the reserved {FEATURE_KEY_PREFIX!r}"
                         for c in self.context if c.startswith(FEATURE_KEY_PREFIX)]
        else:
            template = self.parquet or ""
            names = set(re.findall(r"{([^{}]*)}", template))
            if "date" not in names:
                problems.append(f"parquet: {template!r} has no {{date}}; a file holds one day (and entity)")
            unknown = sorted(names - set(PARQUET_PLACEHOLDERS))
            if unknown:
                problems.append(f"parquet: unknown placeholder(s) {unknown} in {template!r}; use "
                                + ", ".join(f"{{{p}}}" for p in PARQUET_PLACEHOLDERS))
            if self.columns is None:
                problems.append("columns: required with a parquet source (the file's columns this set takes)")
            else:
                problems += _column_problems("columns", self.columns)
                if self.key_column in self.columns:
                    problems.append(f"columns: {self.key_column!r} is the key, not a feature")
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @property
    def key_column(self) -> str:
        return self.key or "unit_id"


def _column_problems(field: str, columns: tuple[str, ...]) -> list[str]:
    if not columns or any(not c for c in columns):
        return [f"{field}: list at least one column, each a non-empty name"]
    if len(set(columns)) != len(columns):
        return [f"{field}: {sorted({c for c in columns if columns.count(c) > 1})} appear more than once"]
    return []


class FeatureSet(_Frozen):
    """Experimental features: a name and version, and where the values come from. Only a
    model version registered with this feature set and version (`sluice models register
    --feature-set name@version`) is trained on them; see docs/feature-sets.md."""

    # A YAML `version: 2` is the version "2", as the registry's feature_set_version is a string.
    model_config = ConfigDict(frozen=True, extra="forbid", coerce_numbers_to_str=True)

    name: str = Field(pattern=NAME_PATTERN, max_length=100, description="feature set name, e.g. recency")
    version: str = Field(pattern=NAME_PATTERN, max_length=64, description="its version, e.g. 2")
    description: str = ""
    source: FeatureSource

    @property
    def ref(self) -> str:
        """`name@version`, as the registry and the logged keys write it."""
        return f"{self.name}@{self.version}"

    @property
    def columns(self) -> tuple[str, ...]:
        """The set's own column names (context keys or file columns), in declared order."""
        return self.source.context or self.source.columns or ()


class ExperimentSpec(_Frozen):
    """The whole definition of an experiment. Durations are in hours/days as named; use the
    `*_ms` properties for the millisecond fields of the Avro records."""

    id: str = Field(pattern=NAME_PATTERN, max_length=128)
    spec_version: int = Field(1, ge=1, description="increases with every change")
    status: Status = "draft"
    description: str = ""
    salt: str = Field(pattern=NAME_PATTERN, max_length=128, description="salt of the bucket hash")
    unit: str = Field(min_length=1, description="name of the randomization unit: user_id, session_id...")
    entity: str | None = Field(None, min_length=1, description="name of the entity field: advertiser_id, site...")
    entities: tuple[str, ...] | None = Field(None, description="the entities the experiment runs for, if fixed")
    parameters: tuple[ParameterSpec, ...] = Field(min_length=1)
    arms: tuple[ArmSpec, ...] = Field(min_length=2)
    default_arm: str = Field(description="served outside the experiment and when no weight table is known")
    policy: PolicySpec
    reward: RewardSpec
    window_days: float = Field(7.0, gt=0, description="length of the sliding statistics window")
    num_buckets: int = Field(DEFAULT_NUM_BUCKETS, ge=2, le=MAX_NUM_BUCKETS)
    traffic_fraction: float = Field(1.0, gt=0, le=1, description="share of units that enter the experiment")
    layer: LayerSpec | None = None
    guardrails: GuardrailConfig = Field(default_factory=GuardrailConfig)
    criteria: DecisionCriteria = Field(default_factory=DecisionCriteria)
    health: HealthConfig = Field(default_factory=HealthConfig)
    decisions: Literal["advise", "act"] = Field(
        "advise", description="advise: Decision events only; act: a kill retires the arm for the entity, a ship "
                              "gives the winner all traffic but the holdback")
    holdback: float = Field(0.05, ge=0, lt=1, description="share of traffic a shipped winner leaves to the others")
    evaluation: OfflineEvaluation = Field(default_factory=OfflineEvaluation)
    models: ModelArms | None = Field(None, description="take registered model versions as arms, per entity")
    feature_sets: tuple[FeatureSet, ...] = Field(
        (), description="experimental features, used only by models that declare them (docs/feature-sets.md)")

    @field_validator("parameters")
    @classmethod
    def _unique_parameters(cls, parameters: tuple[ParameterSpec, ...]) -> tuple[ParameterSpec, ...]:
        _check_unique([p.name for p in parameters], "parameter")
        return parameters

    @field_validator("feature_sets")
    @classmethod
    def _unique_feature_sets(cls, feature_sets: tuple[FeatureSet, ...]) -> tuple[FeatureSet, ...]:
        _check_unique([f.ref for f in feature_sets], "feature set (name@version)")
        return feature_sets

    @model_serializer(mode="wrap")
    def _without_empty_feature_sets(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # A spec without feature sets serializes as before they existed, so readers that do
        # not know the field yet (an SDK not upgraded) still read every such spec.
        data: dict[str, Any] = handler(self)
        if not self.feature_sets:
            data.pop("feature_sets", None)
        return data

    @field_validator("entities")
    @classmethod
    def _unique_entities(cls, entities: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if entities is not None:
            if any(not e for e in entities):
                raise ValueError("entity names must be non-empty")
            _check_unique(list(entities), "entity")
        return entities

    @model_validator(mode="after")
    def _consistent(self) -> ExperimentSpec:
        names = [a.name for a in self.arms]
        problems = []
        try:
            _check_unique(names, "arm")
        except ValueError as exc:
            problems.append(f"arms: {exc}")
        declared = {p.name: p.type for p in self.parameters}
        for i, arm in enumerate(self.arms):
            where = f"arms[{i}] ({arm.name!r}).values"
            missing = [p for p in declared if p not in arm.values]
            extra = [p for p in arm.values if p not in declared]
            if missing:
                problems.append(f"{where}: missing parameter(s) {missing}; every arm must set every declared parameter")
            if extra:
                problems.append(f"{where}: undeclared parameter(s) {extra}; declared are {list(declared)}")
            for name, value in arm.values.items():
                if name in declared and not _has_type(value, declared[name]):
                    article = "an" if declared[name][0] in "aeiou" else "a"
                    problems.append(f"{where}.{name}: expected {article} {declared[name]}, but {value!r} is given")
        if self.default_arm not in names:
            problems.append(f"default_arm: {self.default_arm!r} is not an arm; the arms are {names}")
        if self.entities is not None and self.entity is None:
            problems.append("entities: a list of entities needs the entity field name (entity) as well")
        problems += self._entity_scoped_arm_problems()
        if self.models is not None and declared.get(self.models.parameter) != "string":
            problems.append(f"models.parameter: {self.models.parameter!r} must be a declared string parameter; "
                            f"the parameters are {dict(declared)}")
        try:
            self.guardrails.check_arms(names)
        except GuardrailError as exc:
            problems.append(f"guardrails: {exc}")
        if self.policy.params.get("pooled_prior") and self.reward.type != "binary":
            problems.append("policy.params.pooled_prior: a pooled prior is a Beta prior, for binary rewards only; "
                            f"this experiment's reward is {self.reward.type}")
        unknown = sorted({r.arm for r in self.health.reinstated} - set(names))
        if unknown:
            problems.append(f"health.reinstated: unknown arm(s) {unknown}; the arms are {names}")
        unknown = sorted({r.arm for r in self.health.retired} - set(names))
        if unknown:
            problems.append(f"health.retired: unknown arm(s) {unknown}; the arms are {names}")
        if any(r.arm == self.default_arm for r in self.health.retired):
            problems.append(f"health.retired: the default arm {self.default_arm!r} cannot be retired: it is what "
                            "units outside the experiment and a paused experiment are served")
        if traffic_threshold(self.traffic_fraction, self.num_buckets) == 0:
            problems.append(
                f"traffic_fraction: {self.traffic_fraction} of {self.num_buckets} buckets rounds to 0 buckets; "
                "no unit would enter the experiment"
            )
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @model_validator(mode="after")
    def _policy_params_valid(self) -> ExperimentSpec:
        try:
            from sluice.core.policies import validate_policy_params
        except ModuleNotFoundError as exc:  # the policy registry is written alongside this module
            if exc.name != "sluice.core.policies":
                raise
            return self
        try:
            validate_policy_params(self.policy.name, self.policy.params)
        except ValueError as exc:
            raise ValueError(f"policy: {exc}") from exc
        return self

    def _entity_scoped_arm_problems(self) -> list[str]:
        problems = []
        for i, arm in enumerate(self.arms):
            if arm.entities is None:
                continue
            where = f"arms[{i}] ({arm.name!r}).entities"
            if self.entity is None:
                problems.append(f"{where}: an arm offered to some entities needs the entity field name (entity)")
            if not arm.entities or any(not e for e in arm.entities):
                problems.append(f"{where}: list at least one entity, each a non-empty name (or leave it out: every entity)")
            elif len(set(arm.entities)) != len(arm.entities):
                problems.append(f"{where}: an entity is listed twice")
            if self.entities is not None and set(arm.entities) - set(self.entities):
                problems.append(f"{where}: {sorted(set(arm.entities) - set(self.entities))} are not entities of the "
                                f"experiment {list(self.entities)}")
            if arm.name == self.default_arm:
                problems.append(f"{where}: the default arm is served to every entity and cannot be limited to some")
        return problems

    @property
    def arm_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.arms)

    def arms_of(self, entity: str | None) -> tuple[str, ...]:
        """The arms offered to `entity`: those without an entity list and those that list it."""
        return tuple(a.name for a in self.arms if a.entities is None or entity in a.entities)

    def for_entity(self, entity: str | None) -> ExperimentSpec:
        """The experiment as one entity sees it: only the arms offered to it, with no entity
        lists. The worker computes an entity's weights, statistics, health and decisions from
        this view, so each works with that entity's own arm set. The same spec when no arm is
        limited to some entities."""
        if all(a.entities is None for a in self.arms):
            return self
        arms = tuple(a.model_copy(update={"entities": None}) for a in self.arms
                     if a.entities is None or entity in a.entities)
        names = {a.name for a in arms}
        g = self.guardrails  # pins and warm-up weights of arms the entity lacks do not apply to it
        warmup = {a: w for a, w in (g.warmup_weights or {}).items() if a in names}
        guardrails = g.model_copy(update={"pins": {a: p for a, p in g.pins.items() if a in names},
                                          "warmup_weights": warmup or None})
        return self.model_copy(update={"arms": arms, "guardrails": guardrails})

    def same_for_entity(self, other: ExperimentSpec, entity: str | None) -> bool:
        """Whether `entity` sees the same experiment in both specs (their versions aside): a
        change that adds an arm for another entity, or changes only feature sets (what is
        logged and joined, not how traffic is split), leaves this one's tables alone."""
        ignored = {"spec_version": 0, "feature_sets": ()}
        mine = self.for_entity(entity).model_copy(update=ignored)
        theirs = other.for_entity(entity).model_copy(update=ignored)
        return mine == theirs

    @property
    def window_ms(self) -> int:
        return round(self.window_days * DAY_MS)

    def record_fields(self) -> dict[str, Any]:
        """The fields of the `ExperimentSpec` Avro record this spec determines; the publisher
        adds `event_id` and `updated_at`. Arm values are JSON-encoded, the whole spec travels
        as `spec_json`."""
        return {
            "experiment_id": self.id,
            "spec_version": self.spec_version,
            "status": self.status.upper(),
            "salt": self.salt,
            "num_buckets": self.num_buckets,
            "traffic_fraction": self.traffic_fraction,
            "layer": None if self.layer is None else self.layer.name,
            "unit": self.unit,
            "arms": [
                {"name": a.name, "values": {k: json.dumps(v, sort_keys=True) for k, v in a.values.items()}}
                for a in self.arms
            ],
            "default_arm": self.default_arm,
            "policy": self.policy.name,
            "reward_type": self.reward.type.upper(),
            "attribution_window_ms": self.reward.attribution_window_ms,
            "window_ms": self.window_ms,
            "spec_json": self.model_dump_json(),
        }

    def arm_index(self, name: str) -> int:
        """Position of arm `name` (the order of weights, allocations and statistics)."""
        try:
            return self.arm_names.index(name)
        except ValueError:
            raise SpecError(
                f"arm {name!r} is not in experiment {self.id!r}; the arms are {list(self.arm_names)}"
            ) from None

    def assigner(self, allocation: Allocation) -> Assigner:
        """An `Assigner` for this experiment under `allocation` (one weight table)."""
        if allocation.num_buckets != self.num_buckets:
            raise SpecError(
                f"allocation has {allocation.num_buckets} buckets but experiment {self.id!r} "
                f"has num_buckets {self.num_buckets}"
            )
        return Assigner(
            self.salt,
            allocation,
            self.arm_names,
            self.default_arm,
            self.traffic_fraction,
            None if self.layer is None else self.layer.to_slice(),
        )


def spec_from_record(record: Mapping[str, Any]) -> ExperimentSpec:
    """The spec an `ExperimentSpec` Avro record carries (the inverse of `record_fields`):
    its `spec_json`, validated. Every reader of the experiments topic uses this."""
    try:
        data = json.loads(record["spec_json"])
    except (KeyError, TypeError, ValueError) as exc:
        raise SpecError(f"ExperimentSpec record has no readable spec_json: {exc}") from None
    return spec_from_mapping(data)


def spec_from_mapping(data: Mapping[str, Any]) -> ExperimentSpec:
    """Validate parsed data (from YAML or JSON) into an ExperimentSpec, or raise SpecError."""
    if not isinstance(data, Mapping):
        raise SpecError(f"an experiment spec must be a mapping of fields, but a {type(data).__name__} is given")
    try:
        return ExperimentSpec.model_validate(dict(data))
    except ValidationError as exc:
        problems = tuple(line for e in exc.errors() for line in _describe(e))
        spec_id = data.get("id")
        head = f"experiment spec {spec_id!r}" if isinstance(spec_id, str) else "experiment spec"
        raise SpecError(f"{head} is invalid:\n  " + "\n  ".join(problems), problems) from None


def spec_from_json(text: str | bytes) -> ExperimentSpec:
    """Validate a JSON document (an HTTP body) as `spec_from_mapping` validates parsed data,
    but with no type coercion: a number sent as a string ("100") is refused, not converted,
    so a body is accepted only if it matches the spec's JSON schema, and then the same rules
    across fields decide. Raises SpecError naming every problem."""
    try:
        return ExperimentSpec.model_validate_json(text, strict=True)
    except ValidationError as exc:
        problems = tuple(line for e in exc.errors() for line in _describe(e))
        raise SpecError("experiment spec is invalid:\n  " + "\n  ".join(problems), problems) from None


def load_spec(text: str) -> ExperimentSpec:
    """Parse and validate an experiment spec from YAML (or JSON) text, or raise SpecError."""
    if not isinstance(text, str):
        raise SpecError(f"load_spec takes the YAML text as a str, but a {type(text).__name__} is given")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(f"experiment spec is not valid YAML{where}: {problem}") from None
    return spec_from_mapping(data)


def _describe(error: Any) -> list[str]:
    """One line per problem in a pydantic error: `path: what is wrong, and the value`."""
    path = _path(error.get("loc", ()))
    message = str(error.get("msg", "invalid"))
    if error.get("type") == "value_error":
        # Our own validators name the field path and the value already; a cross-field
        # validator may report several problems, one per line.
        lines = message.removeprefix("Value error, ").split("\n")
        return [f"{path}: {line}" if path else line for line in lines]
    if error.get("type") == "missing":
        return [f"{path}: required field is missing"]
    if error.get("type") == "extra_forbidden":
        return [f"{path}: unknown field (value {_short(error.get('input'))})"]
    return [f"{path}: {message}, but {_short(error.get('input'))} is given"]


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_unique(names: list[str], what: str) -> None:
    seen: set[str] = set()
    dupes = sorted({n for n in names if n in seen or seen.add(n)})  # type: ignore[func-returns-value]
    if dupes:
        raise ValueError(f"{what} names must be unique, but {dupes} appear more than once")


def _has_type(value: Any, kind: ParameterType) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "boolean":
        return isinstance(value, bool)
    return True  # json: any value YAML/JSON can hold
