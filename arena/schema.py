"""The scenario schema: what a scenario may say (plugin entries, threat model, dataset, evaluation settings), as
strict pydantic models; ``arena.validation`` reads a scenario's text into them."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import platformdirs
import pydantic
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from arena.conditions import Condition
from arena.errors import ArenaError
from arena.threat import ThreatModel
from arena.training import TrainConfig

#: The data folder when a scenario names none; else the user cache folder is used.
DATA_ENV = "ARENA_DATA_DIR"
_FRACTION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)\s*$")


class ScenarioError(ArenaError):
    """A scenario that cannot run; the message lists every problem with its file, line and field."""


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
ONE_THREAT, THREATS = "one-threat-model", "threat-model-list"


class Scenario(_Strict):
    """A validated scenario: every model × defense × attack is one matchup."""

    name: str
    description: str = ""
    seed: int = Field(0, ge=0, lt=2**64, description="seeds training, shuffling and every attack (64 bits)")
    dataset: DatasetRef = DatasetRef()
    threat_model: Annotated[
        Annotated[ThreatSection, pydantic.Tag(ONE_THREAT)]
        | Annotated[list[ThreatSection], Field(min_length=1), pydantic.Tag(THREATS)],
        pydantic.Discriminator(lambda v: THREATS if isinstance(v, list) else ONE_THREAT),
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
