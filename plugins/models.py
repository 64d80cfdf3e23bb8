"""The two architectures of the seed study: a six-layer CNN and a CNN-LSTM on the same convolutional trunk."""

from __future__ import annotations

import torch
from torch import nn

from arena import Model, Param, hookimpl

#: CIFAR-10 training-set channel statistics; normalisation lives inside the model so inputs stay in [0, 1].
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


class Normalize(nn.Module):
    """Per-channel standardisation as the model's first layer."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def conv_trunk(normalize: bool) -> nn.Sequential:
    """Six 3×3 convolutions (32, 32/s2, 64, 64/s2, 64, 128/s2), each then ReLU and BatchNorm: 32×32 → 128×4×4."""
    layers: list[nn.Module] = [Normalize(CIFAR10_MEAN, CIFAR10_STD)] if normalize else []
    channels = 3
    for width, stride in ((32, 1), (32, 2), (64, 1), (64, 2), (64, 1), (128, 2)):
        layers += [nn.Conv2d(channels, width, 3, stride=stride, padding=1), nn.ReLU(), nn.BatchNorm2d(width)]
        channels = width
    return nn.Sequential(*layers)


class CNNNet(nn.Module):
    def __init__(self, num_classes: int, normalize: bool) -> None:
        super().__init__()
        self.features = conv_trunk(normalize)
        self.classifier = nn.Linear(128 * 4 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


class CNNLSTMNet(nn.Module):
    def __init__(self, num_classes: int, normalize: bool, hidden: int, layers: int) -> None:
        super().__init__()
        self.features = conv_trunk(normalize)
        self.lstm = nn.LSTM(128, hidden, num_layers=layers, batch_first=True)
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [B, 128, 4, 4] -> [B, 128, 16] -> [B, 16, 128]: 16 spatial steps of 128 features each.
        sequence = self.features(x).flatten(2).transpose(1, 2)
        # cuDNN's RNN backward refuses eval mode; attacks need input gradients in eval mode, so use the native kernel.
        with torch.backends.cudnn.flags(enabled=self.training or not x.is_cuda):
            output, _ = self.lstm(sequence)
        return self.classifier(output[:, -1])


_NORMALIZE = Param(bool, True, "standardise inputs with CIFAR-10 channel statistics inside the model")


class _Seed(Model):
    """The seed's architectures: built for CIFAR-10's 3×32×32 images (the classifier reads a 128×4×4 map)."""

    def input_problem(self, shape: tuple[int, ...]) -> str | None:
        if tuple(shape) == (3, 32, 32):
            return None
        return (f"{self.name} takes 3×32×32 images (its classifier reads the 128×4×4 map of a 32×32 colour image); "
                f"the data set gives {'×'.join(map(str, shape))}: use a model built for that size ({{name: timm, "
                "arch: ...}} or {name: torchvision, arch: ...}), or data of 32×32 colour images")


class CNN(_Seed):
    """The seed study's CNN: six 3×3 conv layers with ReLU and BatchNorm, then a linear classifier."""

    name = "cnn"
    params = {"normalize": _NORMALIZE}

    def build(self, num_classes: int) -> nn.Module:
        return CNNNet(num_classes, self.normalize)


class CNNLSTM(_Seed):
    """The seed study's CNN-LSTM: the CNN's trunk read as 16 steps of 128 features by a 3-layer LSTM."""

    name = "cnn_lstm"
    params = {
        "normalize": _NORMALIZE,
        "hidden": Param(int, 64, "LSTM hidden size", ge=1),
        "layers": Param(int, 3, "stacked LSTM layers", ge=1),
    }

    def build(self, num_classes: int) -> nn.Module:
        return CNNLSTMNet(num_classes, self.normalize, self.hidden, self.layers)


@hookimpl
def arena_register_models(register) -> None:
    register(CNN)
    register(CNNLSTM)
