"""Architectures by name from timm and torchvision.models, at the input size, channels and normalisation the user
states (applied inside the model, so attacks see [0, 1] images), with weights from a local file only.

``{name: timm, arch: resnet18, checkpoint: weights.pt, size: 224}``: without ``checkpoint`` the architecture is
untrained and the arena trains it with the scenario's recipe; with one, the file's ``state_dict`` (``torch.save``) is
loaded and the arena never trains it. Nothing is downloaded: library weights are saved to a file first, where the
machine can (``torch.save(timm.create_model("resnet18", pretrained=True).state_dict(), "weights.pt")``).
"""

from __future__ import annotations

import numbers
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import torch
from torch import nn

from arena import Model, Param, PluginError, hookimpl, unknown_name_message
from arena_plugins.models import Normalize
from arena_plugins.weights import files_hash, read_state, state_dict_problem, weights_problem

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class RepeatChannels(nn.Module):
    """A grey image as the three equal channels of a colour one, for an architecture whose stem takes three."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.expand(-1, 3, -1, -1)


class Named(Model):
    """An architecture of a library, by name, at a stated input size and normalisation."""

    library: ClassVar[str]
    params = {
        "arch": Param(str, help="the library's architecture name, e.g. resnet18"),
        "checkpoint": Param(Path, None, "a state_dict file (torch.save) to load; none: the arena trains the model",
                            nullable=True, check=weights_problem),
        "size": Param(int, 224, "the side of the square images the model takes", ge=8),
        "channels": Param(int, 3, "3: colour; 1: grey", choices=(1, 3)),
        "mean": Param(list, None, "per-channel mean subtracted inside the model (default: ImageNet's, for 3 "
                                  "channels)", nullable=True),
        "std": Param(list, None, "per-channel standard deviation divided by inside the model (default: ImageNet's)",
                     nullable=True),
    }

    def __init__(self, **values: Any) -> None:
        super().__init__(**values)
        self.pretrained = self.checkpoint is not None

    @classmethod
    def names(cls) -> list[str]:
        """The library's architecture names."""
        raise NotImplementedError

    def create(self, num_classes: int) -> nn.Module:
        """The library's untrained architecture for ``num_classes`` classes and this input."""
        raise NotImplementedError

    @classmethod
    def check_params(cls, values: dict[str, Any]) -> dict[str, str]:
        if values["arch"] not in cls.names():
            return {"arch": unknown_name_message(f"{cls.library} architecture", values["arch"], cls.names(),
                                                 suggestions=3, list_known=False)}
        problems = {}
        for key in ("mean", "std"):
            given = values[key]
            if given is None and values["channels"] != 3:
                problems[key] = f"state it for {values['channels']}-channel images (the default is ImageNet's, for 3)"
            elif given is not None and (len(given) != values["channels"] or not all(
                    isinstance(v, numbers.Real) and not isinstance(v, bool) for v in given)):
                problems[key] = f"give {values['channels']} number(s), one per channel; got {given!r}"
        if not problems and values["std"] is not None and min(values["std"]) <= 0:
            problems["std"] = f"every standard deviation must be > 0; got {values['std']!r}"
        return problems

    def build(self, num_classes: int) -> nn.Module:
        net = self.create(num_classes)
        if self.checkpoint is not None:
            state = read_state(self.checkpoint)
            try:
                net.load_state_dict(state.get("state_dict", state))
            except RuntimeError as exc:
                first = str(exc).strip().splitlines()[1:2] or [str(exc)]
                raise PluginError(
                    f"{self.checkpoint}: not a state_dict of {self.library} {self.arch} for {num_classes} classes and "
                    f"{self.channels} channel(s) ({first[0].strip()}); save it from that architecture") from None
        normalize = Normalize(tuple(self.mean or IMAGENET_MEAN), tuple(self.std or IMAGENET_STD))
        return nn.Sequential(normalize, *self.adapters(), net)

    def adapters(self) -> list[nn.Module]:
        """Layers between the normalisation and the library's network (none unless its stem needs them)."""
        return []

    def identity(self) -> str:
        return files_hash([self.checkpoint]) if self.checkpoint is not None else ""

    def input_problem(self, shape: tuple[int, ...]) -> str | None:
        """A wrong input shape, or a checkpoint that is not a state_dict of this architecture (its keys)."""
        wanted = (self.channels, self.size, self.size)
        if tuple(shape) != wanted:
            return (f"{self.library} {self.arch} is set for {'×'.join(map(str, wanted))} images (channels, size); "
                    f"the data set gives {'×'.join(map(str, shape))}: set size and channels to match")
        return None if self.checkpoint is None else state_dict_problem(self.checkpoint, self.create(2))

    def classes_problem(self, num_classes: int) -> str | None:
        """A checkpoint whose tensors do not fit this architecture for ``num_classes`` classes (its classifier)."""
        if self.checkpoint is None:
            return None
        return state_dict_problem(self.checkpoint, self.create(num_classes), f"{num_classes} classes")


def _timm() -> ModuleType:
    """timm, imported when a scenario names it (an optional extra)."""
    try:
        import timm
    except ImportError:
        raise PluginError("timm is not installed; pip install 'adversarial-arena[timm]'") from None
    return timm


class Timm(Named):
    """A timm architecture by name (``arch``), at the stated input size, channels and normalisation."""

    name = "timm"
    library = "timm"

    @classmethod
    def names(cls) -> list[str]:
        return _timm().list_models()

    def create(self, num_classes: int) -> nn.Module:
        timm = _timm()
        config = timm.models.get_pretrained_cfg(self.arch)
        # Transformers are built for one input size: tell them this one (convolutional nets take any).
        sized = config is not None and config.fixed_input_size and tuple(config.input_size[1:]) != (self.size,) * 2
        return timm.create_model(self.arch, pretrained=False, num_classes=num_classes, in_chans=self.channels,
                                 **({"img_size": self.size} if sized else {}))


class TorchvisionModel(Named):
    """A torchvision.models classifier by name (``arch``), at the stated input size, channels and normalisation."""

    name = "torchvision"
    library = "torchvision"

    @classmethod
    def names(cls) -> list[str]:
        import torchvision.models  # here, not at the top: it takes seconds to import (startup time)

        return torchvision.models.list_models(module=torchvision.models)

    def create(self, num_classes: int) -> nn.Module:
        import torchvision.models  # here, not at the top: startup time

        return torchvision.models.get_model(self.arch, weights=None, num_classes=num_classes)

    def adapters(self) -> list[nn.Module]:
        # torchvision's stems take three channels: a grey image enters as three equal ones.
        return [] if self.channels == 3 else [RepeatChannels()]


@hookimpl
def arena_register_models(register) -> None:
    register(Timm)
    register(TorchvisionModel)
