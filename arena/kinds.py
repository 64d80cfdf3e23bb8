"""The plugin kinds (dataset, model, defense, attack, suite) and how each declares its parameters.

A plugin is a small class, in the spirit of torchattacks' ``Attack`` and ART's estimators: it declares its
parameters in ``params`` so that a scenario can be validated before any work starts, and the arena builds it
with the validated values, which become attributes of the instance.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import nn

from arena.errors import ArenaError
from arena.threat import ThreatModel

if TYPE_CHECKING:
    from arena.training import Trainer

_REQUIRED: Any = object()


class DataError(ArenaError):
    """A data set could not be found or read; the message says where the arena looked and how to provide it."""


@dataclass(frozen=True)
class Param:
    """One declared parameter: its type, default (omit it to make the parameter required) and allowed range.

    ``choices`` may be any sequence. A ``pathlib.Path`` parameter is written as a string in a scenario and resolved
    against the scenario file's folder (an absolute path stays as it is).
    """

    type: type
    default: Any = _REQUIRED
    help: str = ""
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    choices: tuple[Any, ...] | None = None
    nullable: bool = False
    #: Checked when the scenario is validated, before any work: the value (a resolved ``Path`` for a path) gives a
    #: problem to report, or None. For what types cannot say, such as a checkpoint that is not a plain state_dict.
    check: Callable[[Any], str | None] | None = None

    def __post_init__(self) -> None:
        if self.choices is not None:
            object.__setattr__(self, "choices", tuple(self.choices))

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED

    def describe(self) -> str:
        """One line such as ``int = 10, >= 1`` for listings and error messages."""
        text = self.type.__name__ + (" | None" if self.nullable else "")
        if not self.required:
            text += f" = {self.default!r}"
        bounds = [f"{op} {v:g}" for op, v in ((">=", self.ge), (">", self.gt), ("<=", self.le)) if v is not None]
        if self.choices:
            bounds.append("one of " + ", ".join(map(str, self.choices)))
        return ", ".join([text, *bounds])


def first_sentence(doc: str | None) -> str:
    """The first sentence of a docstring's first paragraph, on one line (a sentence may span lines; ``et al.``,
    ``e.g.`` and ``i.e.`` end none)."""
    paragraph = " ".join(re.split(r"\n\s*\n", (doc or "").strip())[0].split())
    return re.split(r"(?<=[.!?])(?<! al\.)(?<!e\.g\.)(?<!i\.e\.)\s+(?=[A-Z(`])", paragraph, maxsplit=1)[0]


class Plugin:
    """Base of every plugin kind: a registered ``name``, declared ``params`` and the docstring's first sentence."""

    kind: ClassVar[str]
    name: ClassVar[str]
    params: ClassVar[dict[str, Param]] = {}

    def __init__(self, **values: Any) -> None:
        """Set each parameter as an attribute: the given value, else its declared default (scenarios pass all)."""
        missing = [key for key, spec in self.params.items() if spec.required and key not in values]
        if missing:
            raise TypeError(f"{self.name}: missing required parameter(s): {', '.join(missing)}")
        for key, value in {**{k: p.default for k, p in self.params.items() if not p.required}, **values}.items():
            spec = self.params.get(key)
            setattr(self, key, Path(value) if spec and spec.type is Path and value is not None else value)

    @classmethod
    def check_params(cls, values: dict[str, Any]) -> dict[str, str]:
        """Problems of the validated parameters taken together, by parameter name (a checkpoint missing from the
        folder a name points to, a name a zoo lacks); checked with the scenario, before any work. None by default."""
        return {}

    @classmethod
    def description(cls) -> str:
        """The first sentence of the class docstring, shown by ``arena plugins``."""
        return first_sentence(cls.__doc__)


class Dataset(Plugin):
    """A labelled image data set whose images are float tensors in [0, 1], shape ``[N, C, H, W]``."""

    kind = "dataset"
    num_classes: ClassVar[int]
    #: Images per split, when known without reading the data: lets validation refuse ``samples`` beyond a split.
    sizes: ClassVar[dict[str, int]] = {}
    #: One image's shape ``(C, H, W)``, when fixed: lets validation refuse an L2 ε beyond the input space.
    shape: ClassVar[tuple[int, ...] | None] = None

    def load(self, split: Literal["train", "test"], data_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(images, labels)`` of ``split``; ``data_dir`` is where the data is looked for or stored."""
        raise NotImplementedError

    def input_shape(self) -> tuple[int, ...] | None:
        """One image's shape ``(C, H, W)`` as known before loading (``shape``, or what the parameters state), so
        validation can refuse a model built for another size; None when unknown."""
        return self.shape


class Model(Plugin):
    """An architecture: ``build`` returns an untrained module mapping [0, 1] images to logits."""

    kind = "model"
    #: True when ``build`` returns trained weights (say, from a checkpoint): the arena then neither trains it with the
    #: recipe nor caches it, unless a training-time defense trains it further.
    pretrained: ClassVar[bool] = False
    #: The training recipe this architecture is trained with by default (``arena.TrainConfig`` fields); a
    #: scenario's ``train:`` overrides it field by field, and fields neither sets take the seed study's recipe.
    recipe: ClassVar[dict[str, Any]] = {}

    def build(self, num_classes: int) -> nn.Module:
        """A fresh module; any input normalisation must live inside it, so attacks see the [0, 1] domain."""
        raise NotImplementedError

    def identity(self) -> str:
        """For a pretrained model, what its weights depend on beyond its parameters (e.g. the checkpoint's hash)."""
        return ""

    def input_problem(self, shape: tuple[int, ...]) -> str | None:
        """Why this model cannot take images of ``shape`` ``(C, H, W)`` (checked with the scenario), else None."""
        return None

    def classes_problem(self, num_classes: int) -> str | None:
        """Why this model's stored weights cannot give one logit per class of a data set of ``num_classes`` classes
        (checked with the scenario when the data set states its classes before loading), else None."""
        return None


class Defense(Plugin):
    """Base of the three defense stages: register a ``TrainingDefense``, ``Preprocessor`` or ``Postprocessor``.

    A scenario entry composes them: at most one training-time defense (it makes the weights), then any number of
    preprocessors (applied in the order listed) and postprocessors, around one ``nn.Module`` that every attack sees.
    """

    kind = "defense"
    stage: ClassVar[Literal["none", "training", "preprocess", "postprocess"]] = "none"


class TrainingDefense(Defense):
    """A training-time defense: produces new weights for a model from the training data (cached like any weights)."""

    stage = "training"

    def train(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, trainer: Trainer) -> None:
        """Train ``model`` in place on ``images`` in [0, 1]; ``trainer`` carries the scenario's recipe and device."""
        raise NotImplementedError


class Preprocessor(Defense):
    """An inference-time transform of the input, [0, 1] images to [0, 1] images, applied before the model."""

    stage = "preprocess"
    #: False when ``__call__`` cannot be differentiated in torch; attacks then use BPDA (``estimate_gradient``).
    differentiable: ClassVar[bool] = True
    #: True when ``__call__`` draws randomness; attacks then average gradients over several draws (EOT).
    randomized: ClassVar[bool] = False

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """The transformed batch, same shape, in [0, 1]."""
        raise NotImplementedError

    def estimate_gradient(self, images: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """BPDA: the gradient passed back through a non-differentiable ``__call__``; identity unless overridden."""
        return grad


class Postprocessor(Defense):
    """An inference-time transform of the model's class probabilities (rows summing to 1), applied after the model.

    Attacks see its output but differentiate through it as the identity (BPDA), as an adaptive attacker would.
    """

    stage = "postprocess"

    def __call__(self, probabilities: torch.Tensor) -> torch.Tensor:
        """The transformed probabilities, same shape."""
        raise NotImplementedError


class Attack(Plugin):
    """An attack on ``model`` within ``threat``: called on a batch, returns the adversarial batch."""

    kind = "attack"
    #: True when the attack never uses the model's gradients (noise, decision-based search): the leaderboard then
    #: flags a defense on which it beats the gradient attacks.
    gradient_free: ClassVar[bool] = False

    def __init__(self, model: nn.Module, threat: ThreatModel, **values: Any) -> None:
        super().__init__(**values)
        self.model = model
        self.threat = threat

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Adversarial versions of ``images`` (same shape, in [0, 1]) that try to make the model miss ``labels``."""
        raise NotImplementedError

    def rebuilt(self, threat: ThreatModel, **changes: Any) -> Attack:
        """The same attack on the same module with another threat model and some parameters changed (the
        unconstrained-attack indicator runs it with ε covering the whole box)."""
        return type(self)(self.model, threat, **{**{key: getattr(self, key) for key in self.params}, **changes})


class Suite(Plugin):
    """Several attacks that a scenario names as one entry (``autoattack``) and that run as a cascade: each attack
    only on the samples every earlier one failed on. The leaderboard shows each attack and the suite's worst case."""

    kind = "suite"

    def attacks(self) -> list[dict[str, Any]]:
        """The member attack entries in cascade order, as a scenario would write them: ``{"name": ..., **params}``
        (``eot_samples``, ``bpda``, a ``label`` for a second member of one plugin, and ``when`` conditions too)."""
        raise NotImplementedError


KINDS: dict[str, type[Plugin]] = {cls.kind: cls for cls in (Dataset, Model, Defense, Attack, Suite)}
