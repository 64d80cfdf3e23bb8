"""CIFAR-10 through torchvision, or from ``cifar10.npz`` (uint8 NHWC arrays) for machines that cannot download."""

from __future__ import annotations

import zipfile
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
    sizes = {"train": 50_000, "test": 10_000}
    shape = (3, 32, 32)
    classes = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    params = {"download": Param(bool, True, "download with torchvision when the data is not in the data folder")}

    def load(self, split: Literal["train", "test"], data_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
        npz = data_dir / NPZ_NAME
        if npz.is_file():
            images, labels = _read_npz(npz, split, self.num_classes)
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


def _read_npz(npz: Path, split: str, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """``x_<split>`` and ``y_<split>`` of the archive, each checked: one message names the file, the array and what
    is expected, instead of a traceback or, for images already scaled to [0, 1], a silent second division by 255."""
    names = (f"x_{split}", f"y_{split}")
    try:
        with np.load(npz, allow_pickle=False) as arrays:
            missing = [name for name in names if name not in arrays.files]
            if missing:
                raise DataError(f"{npz}: no array {', '.join(missing)} (it has: {', '.join(arrays.files) or 'none'}); "
                                "expected x_train, y_train, x_test, y_test")
            images, labels = (arrays[name] for name in names)
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{npz}: cannot be read as an .npz archive ({type(exc).__name__}: {exc}); it may be "
                        "truncated or damaged: copy it again") from None
    x, y = names
    if images.dtype != np.uint8:
        raise DataError(f"{npz}: {x} is {images.dtype}; expected uint8 pixel values 0-255 (images already scaled to "
                        "[0, 1] would be divided by 255 again)")
    if images.ndim != 4 or images.shape[1:] != (32, 32, 3):
        raise DataError(f"{npz}: {x} has shape {images.shape}; expected (N, 32, 32, 3), uint8 NHWC")
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{npz}: {y} has shape {labels.shape} and dtype {labels.dtype}; expected ({len(images)},) "
                        f"integer class indices, one per image of {x}")
    if len(labels) and (labels.min() < 0 or labels.max() >= classes):
        raise DataError(f"{npz}: {y} holds labels from {labels.min()} to {labels.max()}; expected class indices "
                        f"0 to {classes - 1}")
    return images, labels


@hookimpl
def arena_register_datasets(register) -> None:
    register(CIFAR10)
