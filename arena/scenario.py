"""Read a YAML scenario and validate all of it (structure, plugin names, plugin parameters) before any work.

Every problem is reported at once, each as ``file:line: field.path: message``, so a typo costs one edit,
not one failed run per typo.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import importlib.util
import math
import os
import re
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import platformdirs
import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from arena.conditions import Condition
from arena.errors import ArenaError
from arena.kinds import Dataset, Param
from arena.registry import PluginError, Registry, unknown_name_message
from arena.threat import ThreatModel
from arena.training import TrainConfig

#: The data folder when a scenario names none; else the user cache folder is used.
DATA_ENV = "ARENA_DATA_DIR"
_FRACTION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)\s*$")


class ScenarioError(ArenaError):
    """A scenario that cannot run; the message lists every problem with its file, line and field."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        #: Each problem's ``file:line: field: message`` line (empty for an error about the file as a whole).
        self.problems = problems or []


def fraction(value: Any) -> Any:
    """Let ε be written as researchers write it: ``8/255`` as well as ``0.0314``."""
    match = _FRACTION.match(value) if isinstance(value, str) else None
    return float(match[1]) / float(match[2]) if match and float(match[2]) != 0 else value


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class PluginRef(_Strict):
    """One plugin as a scenario names it: ``fgsm`` or ``{name: pgd, steps: 20, label: pgd-20}``."""

    name: str
    label: str = ""
    params: dict[str, Any] = {}

    @pydantic.model_validator(mode="before")
    @classmethod
    def _split_params(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"name": data}
        if isinstance(data, dict):
            own = set(cls.model_fields) - {"params"}
            fixed = {k: v for k, v in data.items() if k in own}
            return {**fixed, "params": {k: v for k, v in data.items() if k not in own}}
        return data

    @property
    def key(self) -> str:
        """How results name this entry: its label, else its plugin name."""
        return self.label or self.name


class ModelRef(PluginRef):
    train: TrainConfig = TrainConfig()


class DefenseRef(_Strict):
    """One defense entry: a plugin (``art.jpeg``, ``{name: art.jpeg, quality: 50}``) or a composition
    (``{label: pgd_at+jpeg, chain: [{name: art.madry_pgd}, art.jpeg]}``: one training-time defense at most, then
    preprocessors in the order listed, and postprocessors)."""

    label: str = ""
    chain: list[PluginRef] = Field(min_length=1)

    @pydantic.model_validator(mode="before")
    @classmethod
    def _single(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"chain": [data]}
        if isinstance(data, dict) and "chain" not in data:
            return {"label": data.get("label", ""), "chain": [{k: v for k, v in data.items() if k != "label"}]}
        return data

    @property
    def single(self) -> bool:
        """True when the entry names one plugin rather than a ``chain``."""
        return len(self.chain) == 1

    @property
    def key(self) -> str:
        """How results name this defense: its label, else its plugins' keys joined by ``+``."""
        return self.label or "+".join(ref.key for ref in self.chain)


NO_DEFENSE = DefenseRef(chain=[PluginRef(name="none")])


class SourceRef(_Strict):
    """Where a transfer attack crafts its examples: a model of the scenario (the target's own by default) and a
    defense entry (``none`` by default)."""

    model: str | None = None
    defense: DefenseRef = NO_DEFENSE


class AttackRef(PluginRef):
    """An attack entry; white-box and adaptive (BPDA, EOT) unless told otherwise."""

    source: SourceRef | None = Field(None, description="craft on this model instead of the target (transfer attack)")
    bpda: bool = Field(True, description="differentiate non-differentiable defenses as estimate_gradient says")
    eot_samples: int = Field(10, ge=1, description="gradients of randomized defenses averaged over this many draws")
    suite: str = Field("", description="set by expansion: the suite entry (e.g. autoattack) this attack belongs to")
    when: list[Condition] = Field(
        default_factory=list, description="run only if one of these holds after the attacks before it in its cascade "
                                          "(gradients, black_box; arena.conditions), else record it as skipped")


class DatasetRef(PluginRef):
    name: str = "cifar10"
    split: Literal["train", "test"] = "test"
    samples: int | None = Field(None, ge=1, description="evaluate on the first N samples of the split; all if unset")
    train_samples: int | None = Field(None, ge=1, description="train on the first N training samples; all if unset")
    data_dir: str | None = None


Eps = Annotated[float, pydantic.BeforeValidator(fraction), Field(gt=0, allow_inf_nan=False)]


class ThreatSection(_Strict):
    """The norm and budget; a list of budgets is an ε sweep: one run per ε, read together as robustness curves."""

    norm: Literal["linf", "l2"]
    eps: Annotated[
        list[Eps], pydantic.BeforeValidator(lambda v: v if isinstance(v, list) else [v]), Field(min_length=1)
    ]


#: Successful adversarial examples a matchup keeps unless the scenario says otherwise: enough for the report.
DEFAULT_EXAMPLES = 6


def _examples_count(value: Any) -> Any:
    """``save_examples`` is a whole number ≥ 0 or ``all``; anything else gets one message, not one per form."""
    if value == "all" or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        return value
    raise ValueError("give a whole number ≥ 0 (examples kept per matchup), or all")


#: Tags of ``threat_model``'s two forms (one section, a list of sections); left out of error locations.
_ONE_THREAT, _THREATS = "one-threat-model", "threat-model-list"


class Scenario(_Strict):
    """A validated scenario: every model × defense × attack is one matchup."""

    name: str
    description: str = ""
    seed: int = Field(0, ge=0, lt=2**64, description="seeds training, shuffling and every attack (64 bits)")
    dataset: DatasetRef = DatasetRef()
    threat_model: Annotated[
        Annotated[ThreatSection, pydantic.Tag(_ONE_THREAT)]
        | Annotated[list[ThreatSection], Field(min_length=1), pydantic.Tag(_THREATS)],
        pydantic.Discriminator(lambda v: _THREATS if isinstance(v, list) else _ONE_THREAT),
    ] = Field(description="a norm and its budget(s), or a list of them: one run per (norm, ε)")
    models: list[ModelRef] = Field(min_length=1)
    defenses: list[DefenseRef] = Field(default_factory=lambda: [NO_DEFENSE], min_length=1)
    attacks: list[AttackRef] = Field(min_length=1)
    batch_size: int = Field(500, ge=1, description="images per attack batch")
    executor: Literal["local", "ray"] = Field("local", description="local: this process; ray: a Ray cluster")
    workers: int | None = Field(None, ge=1, description="Ray workers (default 2; the --workers option wins)")
    address: str | None = Field(None, description="a running Ray cluster to join (default: start a local one)")
    evaluation: Literal["full", "cascade"] = Field(
        "full", description="full: every attack on every initially-correct sample; cascade: each attack only on the "
                            "samples every earlier attack failed on (a suite always cascades within itself)")
    report_to: list[Literal["mlflow"]] = Field(
        default_factory=list, description="opt-in reporters: mlflow (one MLflow run per arena run; needs "
                                          "arena[mlflow])")
    save_examples: Annotated[int | Literal["all"], pydantic.BeforeValidator(_examples_count)] = Field(
        DEFAULT_EXAMPLES, description="successful adversarial examples kept per matchup (exact values, labels, "
                                      "predictions and confidences), for reports and `arena examples`; or all")
    active_tests: list[Literal["binarization"]] = Field(
        default_factory=list, description="opt-in active tests run with every white-box matchup: binarization "
                                          "(Zimmermann et al. 2022; about 2 + the attack's passes per tested sample)")
    active_samples: int = Field(100, ge=1, description="samples each active test runs on (the first attacked ones)")
    plugins: list[str] = Field(default_factory=list, description="plugin modules to load: import paths or .py files "
                                                                 "relative to the scenario file")
    _path: str = PrivateAttr("")
    _text: str = PrivateAttr("")

    @property
    def path(self) -> str:
        """The file this scenario was read from."""
        return self._path

    def cascade_before(self, index: int) -> list[AttackRef]:
        """The attacks whose failures choose the samples attack ``index`` runs on: in ``cascade`` evaluation every
        earlier attack, else the earlier members of its suite (none for an attack outside a suite)."""
        attack = self.attacks[index]
        earlier = self.attacks[:index]
        if self.evaluation == "cascade":
            return earlier
        return [ref for ref in earlier if attack.suite and ref.suite == attack.suite]

    @property
    def examples_kept(self) -> int | None:
        """How many successful examples a matchup keeps; None keeps all."""
        return None if self.save_examples == "all" else self.save_examples

    @property
    def text(self) -> str:
        """The file's text, stored with each run so results can be traced to what produced them."""
        return self._text

    @property
    def threats(self) -> list[ThreatModel]:
        """One threat model per ε (several for an ε sweep), smallest first, norm by norm in the scenario's order."""
        sections = self.threat_model if isinstance(self.threat_model, list) else [self.threat_model]
        return [ThreatModel(section.norm, eps) for section in sections for eps in sorted(section.eps)]

    @property
    def threat(self) -> ThreatModel:
        """The first (for a sweep, the smallest) threat model."""
        return self.threats[0]

    @property
    def digest(self) -> str:
        """A hash of the scenario file's text, to tell apart runs of different versions of one scenario."""
        return hashlib.sha256(self.text.encode()).hexdigest()[:16]

    def data_dir(self) -> Path:
        """``dataset.data_dir`` (relative to the scenario file), else ``$ARENA_DATA_DIR``, else the user cache."""
        if self.dataset.data_dir is not None:
            return (Path(self.path).parent / self.dataset.data_dir).expanduser().resolve()
        if os.environ.get(DATA_ENV):
            return Path(os.environ[DATA_ENV]).expanduser().resolve()
        return Path(platformdirs.user_cache_dir("arena")) / "data"


def _line_map(node: yaml.Node, path: tuple = (), lines: dict | None = None) -> dict[tuple, int]:
    """Map every field path of the YAML document to the 1-based line where it is written."""
    lines = {} if lines is None else lines
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            lines[path + (key.value,)] = key.start_mark.line + 1
            _line_map(value, path + (key.value,), lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _line_map(item, path + (index,), lines)
    return lines


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
        self.path, self.file, self.lines, self.items = path, lines is not None, lines or {}, []

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
            loc = prefix + tuple(p for p in item["loc"] if p not in ("params", _ONE_THREAT, _THREATS)
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

    def plugin(self, kind: str, ref: PluginRef, loc: tuple) -> PluginRef | None:
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
        problem = self.registry.build("model", resolved).input_problem(self.shape) if self.shape else None
        if problem:
            self.problems.add(loc + ("name",), problem)
            return None
        recipe = self.registry.get("model", ref.name).cls.recipe
        given = ref.train.model_dump(include=ref.train.model_fields_set)
        try:
            return resolved.model_copy(update={"train": TrainConfig.model_validate({**recipe, **given})})
        except pydantic.ValidationError as exc:
            self.problems.add(loc + ("train",), f"model {ref.name!r} declares an invalid recipe: {exc}")
            return None

    def defense(self, ref: DefenseRef, loc: tuple) -> DefenseRef | None:
        """A defense entry with each plugin resolved; at most one training-time defense per entry."""
        chain = [self.plugin("defense", item, loc if ref.single else loc + ("chain", j))
                 for j, item in enumerate(ref.chain)]
        if None in chain:
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
        for entry in self.registry.build("suite", suite).attacks():
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
            resolver.shape = registry.build("dataset", resolved["dataset"]).input_shape()
        if dataset.name in registry.names("dataset"):
            _check_sizes(data, dataset, registry.get("dataset", dataset.name).cls, resolver.shape, problems)
    model_keys = [ref.key for _, ref in _entries(data, "models", ModelRef)]
    checks = {
        "models": (ModelRef, resolver.model),
        "defenses": (DefenseRef, resolver.defense),
        "attacks": (AttackRef, lambda ref, loc: resolver.attacks(ref, loc, model_keys)),
    }
    for section, (ref_type, check) in checks.items():
        refs, seen = [], {}
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


#: The most YAML nodes a scenario may expand to through aliases: far above any real scenario, far below a bomb.
MAX_NODES = 20_000
_FLOAT_12 = re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)$")


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, reading ``1e-4`` and ``1.0e9`` as numbers (as YAML 1.2 and every researcher do) and
    refusing duplicate keys instead of keeping the last."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first on line {seen[key]}); keep one", key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12, list("-+.0123456789"))


def _expanded_size(node: yaml.Node, sizes: dict[int, int], open_: set[int]) -> int:
    """How many nodes ``node`` stands for once aliases are expanded; raises on a node that contains itself."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_:
        raise yaml.YAMLError("a recursive alias (a node that contains itself)")
    open_.add(key)
    children = node.value if isinstance(node, yaml.SequenceNode) else \
        [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else []
    size = 1 + sum(_expanded_size(child, sizes, open_) for child in children)
    open_.discard(key)
    sizes[key] = min(size, MAX_NODES + 1)
    return sizes[key]


def read_yaml(text: str) -> tuple[Any, yaml.Node | None]:
    """Parse a scenario's text safely: bounded alias expansion, YAML 1.2 floats, no duplicate keys. Returns the data
    and its node tree (for line numbers); raises ``yaml.YAMLError``."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, None
        if _expanded_size(node, {}, set()) > MAX_NODES:
            raise yaml.YAMLError(f"it expands to more than {MAX_NODES:,} values through aliases (an alias bomb?)")
        return loader.construct_document(node), node
    finally:
        loader.dispose()


def bundled() -> dict[str, Path]:
    """The scenarios shipped inside the package (the repository's ``scenarios/``), by file name without ``.yaml``."""
    folder = Path(str(importlib.resources.files("arena.scenarios")))
    return {path.stem: path for path in sorted(folder.glob("*.yaml"))}


def find_scenario(text: str | Path) -> Path:
    """The scenario file ``text`` names: an existing path, else the bundled scenario of that name (``linf_0.1`` or
    ``linf_0.1.yaml``), else the path as given, for ``read_text`` to report."""
    path = Path(text)
    if path.exists() or path.parent != Path("."):
        return path
    return bundled().get(path.name.removesuffix(".yaml"), path)


def read_text(path: Path) -> str:
    """A scenario file's text; raises ``ScenarioError`` for a file that is missing, unreadable or not UTF-8."""
    if not path.is_file():
        hint = f"; bundled scenarios, runnable by name: {', '.join(bundled())} (`arena scenarios` describes them)" \
            if not path.exists() else " (it is not a file)"
        raise ScenarioError(f"{path}: scenario file not found{hint}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ScenarioError(f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
                            "save the scenario as UTF-8") from None
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot be read ({exc.strerror}); check its permissions") from None


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
    for index, threat in enumerate(section if listed else [section]):
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


def declared_plugins(path: str | Path) -> list[str]:
    """The scenario's ``plugins:`` list, ``.py`` files made relative to the scenario's folder; read before the
    registry is built, since the scenario's plugins must be registered to validate it. Malformed files give []
    here and a full report from ``load_scenario``."""
    try:
        data, _ = read_yaml(read_text(Path(path)))
    except (ScenarioError, yaml.YAMLError, RecursionError):
        return []
    entries = data.get("plugins") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        return []
    folder = Path(path).parent
    return [str(folder / e) if e.endswith(".py") else e for e in entries if isinstance(e, str)]


def check_declared(path: str | Path, declared: list[str], allow_outside: bool = False) -> None:
    """The policy for a scenario's ``plugins:`` (they are code, and a scenario may come from someone else): a
    ``.py`` file must lie inside the scenario's folder (no ``..``, no absolute path) unless ``allow_outside``; an
    import path must name an installed module. Raises ``ScenarioError`` before anything is imported."""
    folder = Path(path).parent.resolve()
    problems = []
    for index, entry in enumerate(declared):
        if entry.endswith(".py"):
            file = Path(entry).resolve()
            if not allow_outside and not file.is_relative_to(folder):
                problems.append(f"plugins[{index}]: {file} is outside the scenario's folder {folder}; move the file "
                                "beside the scenario, or pass --allow-plugins-outside if you trust it")
            elif not file.is_file():
                problems.append(f"plugins[{index}]: no such file {file}")
        elif importlib.util.find_spec(entry.split(".")[0]) is None:
            problems.append(f"plugins[{index}]: {entry!r} is not an installed module; install its package, or name "
                            "a .py file beside the scenario")
    if problems:
        count = f"{len(problems)} problem{'s' * (len(problems) > 1)}"
        raise ScenarioError(f"{path}: plugins: {count}; nothing was loaded or run:\n  " + "\n  ".join(problems))


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
    return ref


def load_scenario(path: str | Path, registry: Registry) -> Scenario:
    """Read and fully validate the scenario at ``path``; raises ``ScenarioError`` listing every problem."""
    path = Path(path)
    return parse_scenario(read_text(path), str(path), registry)


def parse_scenario(text: str, shown: str, registry: Registry) -> Scenario:
    """Validate scenario ``text`` (as read from ``shown``, or as a run stored it); raises ``ScenarioError``."""
    try:
        data, node = read_yaml(text)
        lines = _line_map(node) if node is not None else {}
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
