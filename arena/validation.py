"""Validate all of a scenario (structure, plugin names, plugin parameters, defense chains, transfer sources) before
any work.

Every problem is reported at once, each as ``file:line: field.path: message``, so a typo costs one edit,
not one failed run per typo.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field

from arena.kinds import Dataset, Model, Param, Suite
from arena.registry import PluginError, Registry, unknown_name_message
from arena.safe_yaml import line_map, read_yaml
from arena.schema import (
    ONE_THREAT,
    THREATS,
    AttackRef,
    DatasetRef,
    DefenseRef,
    ModelRef,
    PluginRef,
    Scenario,
    ScenarioError,
    fraction,
)
from arena.training import TrainConfig

#: A plugin entry of any section: resolving it gives back the same kind of entry.
R = TypeVar("R", bound=PluginRef)


def _dotted(path: tuple) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text or "(top level)"


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation holds, through ``Optional``, unions, ``list`` and ``Annotated``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [found for arg in typing.get_args(annotation) for found in _models_in(arg)]


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """The field names allowed at ``loc`` inside ``model`` (list indices and optional fields step into the model
    they hold); a plugin entry also allows its plugin's parameters, which the resolver reports separately."""
    for part in loc:
        if isinstance(part, int) or part not in getattr(model, "model_fields", {}):
            continue
        inner = _models_in(model.model_fields[part].annotation)
        model = inner[0] if inner else model
    return sorted(set(model.model_fields) - {"params"})


def _param_model(plugin: str, params: dict[str, Param]) -> type[BaseModel]:
    """A strict pydantic model of a plugin's declared parameters."""
    fields: dict[str, Any] = {}
    for key, spec in params.items():
        kind: Any = Literal[spec.choices] if spec.choices else str if spec.type is Path else spec.type
        if spec.nullable:
            kind = kind | None
        default = ... if spec.required else spec.default
        fields[key] = (kind, Field(default, ge=spec.ge, gt=spec.gt, le=spec.le, description=spec.help))
    return pydantic.create_model(f"{plugin}_params", __config__=ConfigDict(strict=True, extra="forbid"), **fields)


class _Problems:
    """Collects ``file:line: field: message`` lines, finding each field's line in the YAML."""

    def __init__(self, path: str, lines: dict[tuple, int] | None) -> None:
        """``lines`` is None for a scenario given as data rather than read from a file: no line numbers then."""
        self.path, self.file, self.lines, self.items = path, lines is not None, lines or {}, list[str]()

    def add(self, loc: tuple, message: str) -> None:
        if loc and isinstance(loc[-1], int) and loc not in self.lines and loc[:-1] in self.lines:
            loc = loc[:-1]  # a value the schema reads as a one-item list (a single ε) was written as a scalar
        probe = loc
        while probe and probe not in self.lines:
            probe = probe[:-1]
        where = f"{self.path}:{self.lines.get(probe, 1)}" if self.file else self.path
        self.items.append(f"{where}: {_dotted(loc)}: {message}")

    def add_validation(
        self, error: pydantic.ValidationError, prefix: tuple = (), known: list[str] | None = None
    ) -> None:
        """Add pydantic's errors; ``known`` lists the allowed fields for "did you mean", else the schema's."""
        for item in error.errors():
            loc = prefix + tuple(p for p in item["loc"] if p not in ("params", ONE_THREAT, THREATS)
                                 and not str(p).startswith("function-"))
            if item["type"] == "extra_forbidden":
                allowed = known if known is not None else _fields_at(Scenario, item["loc"][:-1])
                message = unknown_name_message("field", str(loc[-1]), allowed)
            elif item["type"] == "missing":
                message = "required field is missing"
            else:
                message = f"{item['msg']} (got {item['input']!r})"
            self.add(loc, message)

    def raise_if_any(self) -> None:
        if self.items:
            count = f"{len(self.items)} problem{'s' * (len(self.items) > 1)}"
            raise ScenarioError(f"{self.path}: {count}; nothing was run:\n  " + "\n  ".join(self.items), self.items)


class _Resolver:
    """Resolves plugin names and validates their parameters entry by entry, collecting every problem."""

    def __init__(self, registry: Registry, problems: _Problems, folder: Path) -> None:
        self.registry, self.problems, self.folder = registry, problems, folder
        #: One image's shape ``(C, H, W)`` as the scenario's data set states it; each model is checked against it.
        self.shape: tuple[int, ...] | None = None
        #: The data set's number of classes when known before loading; pretrained weights are checked against it.
        self.classes: int | None = None

    def plugin(self, kind: str, ref: R, loc: tuple) -> R | None:
        """``ref`` with its parameters validated and defaults filled in; None (and a problem) when it is wrong."""
        try:
            info = self.registry.get(kind, ref.name)
            values = _param_model(ref.name, info.cls.params).model_validate(ref.params).model_dump()
            for key, spec in info.cls.params.items():  # file paths: relative to the scenario's folder
                if values.get(key) is None:
                    continue
                if spec.type is Path:
                    values[key] = str((self.folder / values[key]).expanduser().resolve())
                    if not Path(values[key]).exists():
                        self.problems.add(loc + (key,), f"no such file {values[key]}; give a path relative to the "
                                                        "scenario's folder, or an absolute one")
                        return None
                problem = spec.check(Path(values[key]) if spec.type is Path else values[key]) if spec.check else None
                if problem:
                    self.problems.add(loc + (key,), problem)
                    return None
            together = info.cls.check_params(values)
            for key, problem in together.items():
                self.problems.add(loc + (key,), problem)
            if together:
                return None
        except PluginError as exc:
            self.problems.add(loc + ("name",), str(exc))
        except pydantic.ValidationError as exc:
            self.problems.add_validation(exc, loc, known=sorted({*info.cls.params, *_fields_at(type(ref), ())}))
        else:
            return ref.model_copy(update={"params": values})
        return None

    def model(self, ref: ModelRef, loc: tuple) -> ModelRef | None:
        """A model entry resolved, its ``train:`` filled in from the architecture's ``recipe`` where the scenario
        leaves a field unset."""
        resolved = self.plugin("model", ref, loc)
        if resolved is None:
            return None
        model = self.registry.build(Model, resolved)
        problem = (model.input_problem(self.shape) if self.shape else None) or \
            (model.classes_problem(self.classes) if self.classes else None)
        if problem:
            self.problems.add(loc + ("name",), problem)
            return None
        recipe = cast(type[Model], self.registry.get("model", ref.name).cls).recipe
        given = ref.train.model_dump(include=ref.train.model_fields_set)
        try:
            return resolved.model_copy(update={"train": TrainConfig.model_validate({**recipe, **given})})
        except pydantic.ValidationError as exc:
            self.problems.add(loc + ("train",), f"model {ref.name!r} declares an invalid recipe: {exc}")
            return None

    def defense(self, ref: DefenseRef, loc: tuple) -> DefenseRef | None:
        """A defense entry with each plugin resolved; at most one training-time defense per entry."""
        found = [self.plugin("defense", item, loc if ref.single else loc + ("chain", j))
                 for j, item in enumerate(ref.chain)]
        chain = [item for item in found if item is not None]
        if len(chain) < len(found):
            return None
        training = [item.name for item in self.registry.training_stages(chain)]
        if len(training) > 1:
            self.problems.add(loc, f"at most one training-time defense per entry, found {', '.join(training)}; "
                                   "make them separate entries")
            return None
        return ref.model_copy(update={"chain": chain})

    def attacks(self, ref: AttackRef, loc: tuple, models: list[str]) -> list[AttackRef | None]:
        """An attack entry, or a suite entry expanded into its member attacks (keys ``<suite>/<member>``)."""
        attacks, suites = self.registry.names("attack"), self.registry.names("suite")
        if ref.name not in attacks and ref.name not in suites:  # the known names include the suites
            self.problems.add(loc + ("name",), unknown_name_message("attack", ref.name, [*attacks, *suites]))
            return [None]
        if ref.name not in suites or ref.name in attacks:
            return [self.attack(ref, loc, models)]
        suite = self.plugin("suite", ref, loc)
        if suite is None:
            return [None]
        members = []
        for entry in self.registry.build(Suite, suite).attacks():
            label = f"{ref.key}/{entry.get('label') or entry['name']}"
            member = {"bpda": ref.bpda, "eot_samples": ref.eot_samples, **entry, "label": label}
            member_ref = AttackRef.model_validate(member).model_copy(update={"source": ref.source, "suite": ref.key})
            members.append(self.attack(member_ref, loc, models))
        return members

    def attack(self, ref: AttackRef, loc: tuple, models: list[str]) -> AttackRef | None:
        """An attack entry with its parameters and its transfer source (model key, defense) checked."""
        resolved = self.plugin("attack", ref, loc)
        if ref.source is None:
            return resolved
        if ref.source.model is not None and ref.source.model not in models:
            message = unknown_name_message("model of this scenario", ref.source.model, models)
            self.problems.add(loc + ("source", "model"), message)
            return None
        defense = self.defense(ref.source.defense, loc + ("source", "defense"))
        if resolved is None or defense is None:
            return None
        return resolved.model_copy(update={"source": ref.source.model_copy(update={"defense": defense})})


def _entries(data: dict[str, Any], section: str, ref_type: type[BaseModel]) -> Iterator[tuple[int, Any]]:
    """The section's entries that are structurally sound (the schema reports the others), with their index."""
    raw = data.get(section, Scenario.model_fields[section].get_default(call_default_factory=True))
    for index, entry in enumerate(raw if isinstance(raw, list) else []):
        try:
            yield index, entry if isinstance(entry, ref_type) else ref_type.model_validate(entry)
        except pydantic.ValidationError:
            continue


def _check_plugins(data: dict[str, Any], registry: Registry, problems: _Problems, folder: Path) -> dict[str, Any]:
    """Resolve every plugin name and validate its parameters, entry by entry, even when other fields are wrong.

    Returns each section's entries with their parameters validated and defaults filled in.
    """
    resolver = _Resolver(registry, problems, folder)
    resolved: dict[str, Any] = {}
    try:
        dataset = DatasetRef.model_validate(data.get("dataset", {}))
    except pydantic.ValidationError:
        pass
    else:
        resolved["dataset"] = resolver.plugin("dataset", dataset, ("dataset",))
        if resolved["dataset"] is not None:
            built = registry.build(Dataset, resolved["dataset"])
            resolver.shape, resolver.classes = built.input_shape(), getattr(built, "num_classes", None)
        if dataset.name in registry.names("dataset"):
            cls = cast(type[Dataset], registry.get("dataset", dataset.name).cls)
            _check_sizes(data, dataset, cls, resolver.shape, problems)
    model_keys = [ref.key for _, ref in _entries(data, "models", ModelRef)]
    checks: dict[str, tuple[type[PluginRef] | type[DefenseRef], Callable[[Any, tuple], Any]]] = {
        "models": (ModelRef, resolver.model),
        "defenses": (DefenseRef, resolver.defense),
        "attacks": (AttackRef, lambda ref, loc: resolver.attacks(ref, loc, model_keys)),
    }
    for section, (ref_type, check) in checks.items():
        refs: list[Any] = []
        seen: dict[str, int] = {}
        for index, ref in _entries(data, section, ref_type):
            checked = check(ref, (section, index))
            for item in checked if isinstance(checked, list) else [checked]:
                key = item.key if item is not None else ref.key
                if key in seen:
                    problems.add((section, index), f"{key!r} appears twice (also at index {seen[key]}); "
                                                   "give each a distinct `label`")
                seen[key] = index
                refs.append(item)
        resolved[section] = refs
    return resolved


def _check_sizes(
    data: dict[str, Any], dataset: DatasetRef, cls: type[Dataset], shape: tuple[int, ...] | None, problems: _Problems
) -> None:
    """What the data set's declared sizes rule out before any data is read: more samples than a split holds, and
    a budget that is no constraint at all (L∞ ε ≥ 1 on [0, 1] images; L2 ε above the input space's diameter)."""
    for field, split in (("samples", dataset.split), ("train_samples", "train")):
        wanted, size = getattr(dataset, field), cls.sizes.get(split)
        if wanted is not None and size is not None and wanted > size:
            problems.add(("dataset", field), f"{wanted} is more than the {size} images of the {split} split of "
                                             f"{dataset.name}; lower it, or leave it unset to use all")
    section = data.get("threat_model")
    listed = isinstance(section, list)
    for index, threat in enumerate(section if isinstance(section, list) else [section]):
        if not isinstance(threat, dict):
            continue
        loc = ("threat_model", index, "eps") if listed else ("threat_model", "eps")
        raw = threat.get("eps")
        for eps in raw if isinstance(raw, list) else [raw]:
            eps = fraction(eps)
            if not isinstance(eps, int | float) or isinstance(eps, bool) or not math.isfinite(eps):
                continue
            if threat.get("norm") == "linf" and eps >= 1:
                problems.add(loc, f"L∞ ε = {eps:g} lets an attack reach any image in [0, 1]; use ε < 1 (the "
                                  "field's standard is 8/255)")
            elif threat.get("norm") == "l2" and shape and eps > math.sqrt(math.prod(shape)):
                diameter = math.sqrt(math.prod(shape))
                problems.add(loc, f"L2 ε = {eps:g} is more than the diameter of the [0, 1] input space "
                                  f"({diameter:.4g} for {dataset.name}); use a smaller ε (the field's usual "
                                  "CIFAR-10 L2 budget is 0.5)")


def resolve_model(entry: str | dict[str, Any], registry: Registry, shown: str) -> ModelRef:
    """One model entry, as a scenario's ``models:`` would hold it, validated as there (plugin parameters and their
    checks); raises ``ScenarioError`` naming each problem, as ``shown``."""
    problems = _Problems(shown, None)
    try:
        ref = _Resolver(registry, problems, Path.cwd()).model(ModelRef.model_validate(entry), ("model",))
    except pydantic.ValidationError as exc:
        problems.add_validation(exc, ("model",), known=_fields_at(ModelRef, ()))
        ref = None
    problems.raise_if_any()
    assert ref is not None, "a model entry without problems resolves"
    return ref


def parse_scenario(text: str, shown: str, registry: Registry) -> Scenario:
    """Validate scenario ``text`` (as read from ``shown``, or as a run stored it); raises ``ScenarioError``."""
    try:
        data, node = read_yaml(text)
        lines = line_map(node) if node is not None else {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{shown}:{mark.line + 1}" if mark else shown
        problem = getattr(exc, "problem", None) or str(exc)
        raise ScenarioError(f"{where}: malformed YAML: {problem}; nothing was run") from None
    return validate_scenario(data, shown, registry, text, lines)


def validate_scenario(
    data: Any, shown: str, registry: Registry, text: str | None = None, lines: dict[tuple, int] | None = None
) -> Scenario:
    """Validate a scenario given as data (as YAML would hold it; ``evaluate`` builds one directly), shown as
    ``shown`` (plugin paths are relative to its folder), with its file's ``text`` and field ``lines`` when it came from
    a file (else its record is the validated scenario as YAML); raises ``ScenarioError`` listing every problem."""
    problems = _Problems(shown, lines)
    if not isinstance(data, dict):
        problems.add((), "a scenario is a YAML mapping with name, threat_model, models and attacks; "
                         f"got {type(data).__name__}")
        problems.raise_if_any()
    try:
        scenario = Scenario.model_validate(data)
    except pydantic.ValidationError as exc:
        problems.add_validation(exc)
    resolved = _check_plugins(data, registry, problems, Path(shown).parent)
    problems.raise_if_any()
    scenario = scenario.model_copy(update=resolved)
    scenario._path = shown
    scenario._text = yaml.safe_dump(scenario.model_dump(mode="json"), sort_keys=False) if text is None else text
    return scenario
