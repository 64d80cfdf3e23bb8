"""ResNet-18 for CIFAR-10, the second seed study's architecture, built from torchvision's ``ResNet`` and ``BasicBlock``.

The CIFAR variant (He et al.; the one RobustBench's and most adversarial-training papers' ResNet-18s use): a 3×3
stride-1 stem and no max-pool, so 32×32 inputs keep their resolution into the first stage; normalisation inside.
"""

from __future__ import annotations

from torch import nn

from arena import Model, Param, hookimpl
from arena_plugins.models import CIFAR10_MEAN, CIFAR10_STD, Normalize


def cifar_resnet18(num_classes: int, normalize: bool) -> nn.Sequential:
    """torchvision's ResNet-18 with the CIFAR stem (3×3, stride 1, no max-pool), after an optional ``Normalize``."""
    # Imported here, not at the top: importing torchvision.models takes seconds (startup time).
    from torchvision.models.resnet import BasicBlock, ResNet

    net = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes)
    net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return nn.Sequential(Normalize(CIFAR10_MEAN, CIFAR10_STD) if normalize else nn.Identity(), net)


class ResNet18(Model):
    """ResNet-18, CIFAR variant (3×3 stride-1 stem, no max-pool): 11.2 M parameters, 0.56 GFLOPs per image."""

    name = "resnet18"
    params = {"normalize": Param(bool, True, "standardise inputs with CIFAR-10 channel statistics inside the model")}
    #: The standard short CIFAR recipe: SGD with momentum 0.9 and weight decay 5e-4, batch 128, a one-cycle
    #: schedule peaking at lr 0.1, random 4-pixel crops and flips. CPU scenarios lower ``epochs`` (README: cost).
    recipe = {"epochs": 15, "batch_size": 128, "lr": 0.1, "optimizer": "sgd", "momentum": 0.9,
              "weight_decay": 5e-4, "schedule": "onecycle", "augment": "crop_flip"}

    def build(self, num_classes: int) -> nn.Module:
        return cifar_resnet18(num_classes, self.normalize)

    def input_problem(self, shape: tuple[int, ...]) -> str | None:
        if shape[0] == 3:
            return None
        return (f"resnet18 takes colour images (3 channels, any size); the data set gives {shape[0]}-channel images: "
                "use {name: timm, arch: resnet18, channels: 1} or {name: torchvision, arch: resnet18, channels: 1}")


@hookimpl
def arena_register_models(register) -> None:
    register(ResNet18)
