"""CIFAR-10 through torchvision, or from ``cifar10.npz`` (uint8 NHWC arrays) for machines that cannot download.

``Torchvision`` is the pattern for every such data set (CIFAR-100 and SVHN in ``arena_plugins.user_data``), and
``read_npz`` the checks every ``.npz`` of images goes through.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch

from arena import DataError, Dataset, Param, hookimpl
from arena import untrusted as limits

NPZ_NAME = "cifar10.npz"


class Torchvision(Dataset):
    """A torchvision data set read from ``<data_dir>/<npz_name>`` when present, else through torchvision."""

    #: The archive looked for first, torchvision's folder inside ``data_dir`` (named in messages), a title for them.
    npz_name: ClassVar[str]
    folder: ClassVar[str]
    title: ClassVar[str]
    shape = (3, 32, 32)  # CIFAR-10, CIFAR-100 and SVHN alike: 32×32 colour images
    params = {"download": Param(bool, True, "download with torchvision when the data is not in the data folder")}

    def load(self, split: Literal["train", "test"], data_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
        npz = data_dir / self.npz_name
        if npz.is_file():
            images, labels = read_npz(npz, split, self.num_classes, self.shape)
        else:
            try:
                images, labels = self.from_torchvision(split, str(data_dir))
            except Exception as exc:
                tried = "downloading failed" if self.download else "downloading is off (download: false)"
                raise DataError(
                    f"{self.title} not found: looked for {npz} and for torchvision's {data_dir / self.folder}, "
                    f"and {tried} ({type(exc).__name__}: {exc}). Provide it by setting ARENA_DATA_DIR (or "
                    f"dataset.data_dir in the scenario) to a folder holding {self.npz_name} with arrays x_train, "
                    f"y_train, x_test, y_test (uint8, NHWC), or by allowing the download."
                ) from None
        return to_tensors(images, labels)

    def from_torchvision(self, split: str, root: str) -> tuple[np.ndarray, np.ndarray]:
        """``split`` as uint8 NHWC images and integer labels, through torchvision (downloading if allowed)."""
        raise NotImplementedError


class CIFAR10(Torchvision):
    """CIFAR-10: 50,000 training and 10,000 test 32×32 colour images in 10 classes."""

    name = "cifar10"
    num_classes = 10
    sizes = {"train": 50_000, "test": 10_000}
    classes = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    npz_name, folder, title = NPZ_NAME, "cifar-10-batches-py", "CIFAR-10"
    #: torchvision's class for it, by name in ``torchvision.datasets`` (CIFAR-100 shares the layout).
    source: ClassVar[str] = "CIFAR10"

    def from_torchvision(self, split: str, root: str) -> tuple[np.ndarray, np.ndarray]:
        # Imported here, not at the top: ``import torchvision`` takes seconds (startup time).
        import torchvision

        data = getattr(torchvision.datasets, self.source)(root, train=split == "train", download=self.download)
        return data.data, np.asarray(data.targets)


def to_tensors(images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 NHWC images and integer labels as float NCHW images in [0, 1] and int64 labels."""
    images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255)
    return images.contiguous(), torch.from_numpy(labels.astype(np.int64))


def read_npz(
    npz: Path, split: str, classes: int | None, shape: tuple[int, ...] | None
) -> tuple[np.ndarray, np.ndarray]:
    """``x_<split>`` (NHWC, or NHW for grey images) and ``y_<split>`` of the archive, each checked: one message names
    the file, the array and what is expected, instead of a traceback or, for images already scaled to [0, 1], a
    silent second division by 255. ``shape`` ``(C, H, W)`` is the one image shape allowed (None: any, with 1 or 3
    channels); ``classes`` bounds the labels (None: any ≥ 0)."""
    x = f"x_{split}"
    images, labels = _arrays(npz, split, x, f"y_{split}")
    if images.dtype != np.uint8:
        raise DataError(f"{npz}: {x} is {images.dtype}; expected uint8 pixel values 0-255 (images already scaled to "
                        "[0, 1] would be divided by 255 again)")
    if images.ndim == 3 and (shape is None or shape[0] == 1):
        images = images[..., None]  # grey images written N×H×W
    wanted = f"(N, {shape[1]}, {shape[2]}, {shape[0]})" if shape else "(N, H, W, C) with C 1 or 3, or (N, H, W)"
    if images.ndim != 4 or (images.shape[1:] != (*shape[1:], shape[0]) if shape else images.shape[3] not in (1, 3)):
        raise DataError(f"{npz}: {x} has shape {images.shape}; expected {wanted}, uint8 NHWC (every split of one "
                        "image size and channel count)")
    if not len(images):
        raise DataError(f"{npz}: {x} holds no image: nothing can be measured on it; give it images")
    _check_labels(npz, split, labels, len(images), classes)
    return images, labels


def read_labels(npz: Path, split: str) -> np.ndarray:
    """``y_<split>`` of the archive without its images (what counting the classes needs), checked as ``read_npz``
    checks it; its length is compared with the one in ``x_<split>``'s header."""
    [labels] = _arrays(npz, split, f"y_{split}")
    found = npz_shape(npz, f"x_{split}")
    _check_labels(npz, split, labels, found[0] if found else labels.size, None)
    return labels


def _header(archive: zipfile.ZipFile, npz: Path, name: str) -> tuple[tuple[int, ...], np.dtype]:
    """An array's shape and dtype from its ``.npy`` header, refused before it is read when the data it claims is
    beyond ``MAX_ARRAY_BYTES`` or beyond what the archive holds for it (a forged or truncated header)."""
    info = archive.getinfo(f"{name}.npy")
    with archive.open(info) as file:
        version = np.lib.format.read_magic(file)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(file, max_header_size=10_000)
    claimed = math.prod(shape) * dtype.itemsize
    if claimed > limits.MAX_ARRAY_BYTES or claimed > info.file_size:
        raise DataError(f"{npz}: {name}'s header claims {shape} {dtype} ({claimed:,} bytes) but the archive holds "
                        f"{info.file_size:,} bytes for it (at most {limits.MAX_ARRAY_BYTES:,} allowed); save it again "
                        "with np.savez")
    return shape, dtype


def _arrays(npz: Path, split: str, *wanted: str) -> list[np.ndarray]:
    """The arrays ``wanted`` of the archive, and only those (``np.load`` reads an .npz array by array, when asked),
    once it is known to be an .npz holding both of ``split``'s, with headers within the limits: one message for a
    missing array, a forged header and an unreadable archive."""
    names = (f"x_{split}", f"y_{split}")
    try:
        with npz.open("rb") as file:
            magic = file.read(4)
        if magic != b"PK\x03\x04":
            what = "a single .npy array" if magic == b"\x93NUM" else f"a file starting {magic!r}"
            raise DataError(f"{npz}: is {what}, not an .npz archive; save the four arrays with np.savez(file, "
                            "x_train=..., y_train=..., x_test=..., y_test=...)")
        with zipfile.ZipFile(npz) as archive:
            present = [n.removesuffix(".npy") for n in archive.namelist()]
            missing = [name for name in names if name not in present]
            if missing:
                raise DataError(f"{npz}: no array {', '.join(missing)} (it has: {', '.join(present) or 'none'}); "
                                "expected x_train, y_train, x_test, y_test")
            for name in wanted:
                _header(archive, npz, name)
        with np.load(npz, allow_pickle=False) as arrays:
            return [arrays[name] for name in wanted]
    except DataError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, MemoryError) as exc:
        why = f"{type(exc).__name__}: {limits.one_line(exc, 100)}"
        raise DataError(f"{npz}: cannot be read as an .npz archive ({why}); it may be truncated or damaged: copy it "
                        "again") from None


def _check_labels(npz: Path, split: str, labels: np.ndarray, count: int, classes: int | None) -> None:
    """One message when ``y_<split>`` is not ``count`` integer class indices (below ``classes`` when given, and
    below ``MAX_CLASSES`` always)."""
    x, y = f"x_{split}", f"y_{split}"
    if labels.shape == (count, 1):
        raise DataError(f"{npz}: {y} has shape {labels.shape}; expected ({count},): flatten it with y.reshape(-1)")
    if labels.shape != (count,) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{npz}: {y} has shape {labels.shape} and dtype {labels.dtype}; expected ({count},) "
                        f"integer class indices, one per image of {x} (float labels are not rounded for you)")
    top = min(classes, limits.MAX_CLASSES) if classes is not None else limits.MAX_CLASSES
    if len(labels) and (labels.min() < 0 or labels.max() >= top):
        raise DataError(f"{npz}: {y} holds labels from {labels.min()} to {labels.max()}; expected class indices 0 to "
                        f"{top - 1}")


def npz_shape(npz: Path, name: str) -> tuple[int, ...] | None:
    """The shape of array ``name`` in the archive, read from its header without loading it; None if unreadable."""
    try:
        with zipfile.ZipFile(npz) as archive, archive.open(f"{name}.npy") as file:
            version = np.lib.format.read_magic(file)
            header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            return header(file, max_header_size=10_000)[0]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


@hookimpl
def arena_register_datasets(register) -> None:
    register(CIFAR10)
