"""CIFAR-10 through torchvision, or from ``cifar10.npz`` (uint8 NHWC arrays) for machines that cannot download."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torchvision

from arena import DataError, Dataset, Param, hookimpl

NPZ_NAME = "cifar10.npz"


class CIFAR10(Dataset):
    """CIFAR-10: 50,000 training and 10,000 test 32×32 colour images in 10 classes."""

    name = "cifar10"
    num_classes = 10
    classes = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    params = {"download": Param(bool, True, "download with torchvision when the data is not in the data folder")}

    def load(self, split: Literal["train", "test"], data_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
        npz = data_dir / NPZ_NAME
        if npz.is_file():
            with np.load(npz) as arrays:
                images, labels = arrays[f"x_{split}"], arrays[f"y_{split}"]
        else:
            try:
                data = torchvision.datasets.CIFAR10(str(data_dir), train=split == "train", download=self.download)
            except Exception as exc:
                tried = "downloading failed" if self.download else "downloading is off (download: false)"
                raise DataError(
                    f"CIFAR-10 not found: looked for {npz} and for torchvision's {data_dir / 'cifar-10-batches-py'}, "
                    f"and {tried} ({type(exc).__name__}: {exc}). Provide it by setting ARENA_DATA_DIR (or "
                    f"dataset.data_dir in the scenario) to a folder holding {NPZ_NAME} with arrays x_train, y_train, "
                    f"x_test, y_test (uint8, NHWC), or by allowing the download."
                ) from exc
            images, labels = data.data, np.asarray(data.targets)
        images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255)
        return images.contiguous(), torch.from_numpy(labels.astype(np.int64))


@hookimpl
def arena_register_datasets(register) -> None:
    register(CIFAR10)
