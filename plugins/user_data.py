"""A user's own data (a folder of class subfolders, an ``.npz`` of arrays) and torchvision's CIFAR-100 and SVHN.

Every image becomes a float tensor in [0, 1], ``[C, H, W]``, whatever its size and channel count; the models, attacks
and checks downstream read the shape from the data.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, PngImagePlugin

from arena import DataError, Dataset, Param, hookimpl
from arena import untrusted as limits
from arena_plugins.cifar10 import CIFAR10, Torchvision, npz_shape, read_labels, read_npz, to_tensors

_SPLITS = ("train", "test")
#: ImageNet's evaluation convention: resize the short side to size / 0.875 (256 for 224), then crop the centre.
CROP_FRACTION = 0.875


#: The image files an image folder is read for (torchvision's ImageFolder list); others, and hidden files, are skipped.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
#: Pillow modes of one-channel images.
_GREY = {"1", "L", "LA", "I", "I;16", "F"}


def _class_folders(root: Path) -> list[Path]:
    """The class subfolders: hidden ones (``.ipynb_checkpoints``) and links are not classes."""
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith("."))


def _image_files(folder: Path) -> list[Path]:
    """The image files under a class folder, without following links or entering hidden folders."""
    found = []
    for top, dirs, files in os.walk(folder):  # os.walk follows no link to a folder by default
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(top) / f for f in sorted(files) if not f.startswith(".")
                  and f.lower().endswith(IMAGE_SUFFIXES) and not (Path(top) / f).is_symlink()]
    return found


def _split_root(root: Path, split: str) -> Path:
    """``root/<split>`` when the folder holds both ``train/`` and ``test/``, else ``root`` itself for either split."""
    return root / split if all((root / s).is_dir() for s in _SPLITS) else root


def _open(path: Path) -> Image.Image:
    """One image file decoded under the limits of ``arena.untrusted`` (pixels, PNG text), or one ``DataError``."""
    Image.MAX_IMAGE_PIXELS = limits.MAX_IMAGE_PIXELS
    PngImagePlugin.MAX_TEXT_CHUNK, PngImagePlugin.MAX_TEXT_MEMORY = limits.MAX_TEXT_CHUNK, limits.MAX_TEXT_MEMORY
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                return image
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DataError(f"{path}: more than {limits.MAX_IMAGE_PIXELS:,} pixels (a decompression bomb?); remove it or "
                        "shrink it") from None
    except Exception as exc:  # a decoder given hostile bytes fails in many ways (OSError, SyntaxError, ValueError)
        why = f"{type(exc).__name__}: {limits.one_line(exc, 100)}"
        raise DataError(f"{path}: not a readable image ({why}); remove it or replace it") from None


class ImageFolder(Dataset):
    """A folder of class subfolders (torchvision's ImageFolder layout), resized and centre-cropped to ``size``."""

    name = "imagefolder"
    params = {
        "root": Param(Path, help="a folder with one subfolder of images per class (or train/ and test/ folders, each "
                                 "laid out so); relative to the scenario's folder"),
        "size": Param(int, 224, "the side of the square images the model gets", ge=8),
        "resize": Param(int, None, "the short side is resized to this before the centre crop (default: size / "
                                   "0.875, ImageNet's 256 for 224)", ge=8, nullable=True),
        "channels": Param(int, 3, "3: colour (RGB); 1: grey", choices=(1, 3)),
    }

    def __init__(self, **values: Any) -> None:
        super().__init__(**values)
        self.classes = tuple(p.name for p in _class_folders(_split_root(self.root, "test")))
        self.num_classes = len(self.classes)
        #: Whether each loaded split's images are grey: colour and grey images are not mixed silently.
        self._grey: dict[str, tuple[bool, Path]] = {}

    @classmethod
    def check_params(cls, values: dict[str, Any]) -> dict[str, str]:
        root = Path(values["root"])
        if not root.is_dir():
            return {"root": f"{root} is not a folder; give a folder holding one subfolder of images per class"}
        names = {split: [p.name for p in _class_folders(_split_root(root, split))] for split in _SPLITS}
        if not names["test"]:
            return {"root": f"{root} has no class subfolders; lay it out as {root}/<class>/<image> (one subfolder per "
                            "class, as torchvision's ImageFolder reads it)"}
        if len(names["test"]) < 2:
            return {"root": f"{root} has one class subfolder ({names['test'][0]}): with one class every prediction is "
                            "right, so no accuracy means anything; give at least two classes"}
        if names["train"] != names["test"]:
            return {"root": f"{root}: train/ and test/ hold different class subfolders ({', '.join(names['train'])} "
                            f"vs {', '.join(names['test'])}); give both the same classes"}
        if values["resize"] is not None and values["resize"] < values["size"]:
            return {"resize": f"{values['resize']} is smaller than size {values['size']}; the centre crop needs "
                              "resize ≥ size"}
        return {}

    def input_shape(self) -> tuple[int, ...]:
        return self.channels, self.size, self.size

    def load(self, split: Literal["train", "test"], data_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
        """The images taken round-robin over the classes (each class's first image, then each second, ...), so that
        ``samples: N`` covers every class rather than the first class of a sorted folder."""
        # Imported here, not at the top: ``import torchvision`` takes seconds (startup time).
        from torchvision import transforms

        folder = _split_root(self.root, split)
        classes = _class_folders(folder)
        if tuple(p.name for p in classes) != self.classes:
            raise DataError(f"{folder}: its classes ({', '.join(p.name for p in classes)}) are not those of the test "
                            f"images ({', '.join(self.classes)}); give every split the same class subfolders")
        files = [_image_files(c) for c in classes]
        empty = [c.name for c, found in zip(classes, files) if not found]
        if empty:
            raise DataError(f"{folder}: class folder(s) {', '.join(empty)} hold no image ({', '.join(IMAGE_SUFFIXES)}, "
                            "links not followed); put images in every class folder")
        order = sorted((rank, target) for target, found in enumerate(files) for rank in range(len(found)))
        resize = self.resize or round(self.size / CROP_FRACTION)
        steps = transforms.Compose([transforms.Resize(resize), transforms.CenterCrop(self.size),
                                    transforms.ToTensor()])
        images = []
        for rank, target in order:
            path = files[target][rank]
            image = _open(path)
            if self.channels == 3:
                self._same_colour(split, image.mode in _GREY, path)
            images.append(steps(image.convert("L" if self.channels == 1 else "RGB")))
        labels = torch.tensor([target for _, target in order], dtype=torch.int64)
        return torch.stack(images), labels

    def _same_colour(self, split: str, grey: bool, path: Path) -> None:
        """Refuse grey and colour images in one data set read as colour: a grey image would pass as three equal
        channels, measured on other images than the rest."""
        seen = next(iter(self._grey.values()), None)
        self._grey.setdefault(split, (grey, path))
        if seen is not None and seen[0] != grey:
            kind, other = ("grey", "colour") if grey else ("colour", "grey")
            raise DataError(f"{path}: a {kind} image, but {seen[1]} is {other}; give every split images of one kind, "
                            "or set channels: 1 to read them all as grey")


class NPZ(Dataset):
    """A user's arrays in one ``.npz``: ``x_train, y_train, x_test, y_test``, uint8 NHWC (or NHW for grey)."""

    name = "npz"
    params = {
        "file": Param(Path, help="the .npz archive; relative to the scenario's folder"),
        "num_classes": Param(int, None, "number of classes (default: the largest label + 1, read at load)", ge=2,
                             nullable=True),
    }

    def input_shape(self) -> tuple[int, ...] | None:
        found = npz_shape(self.file, "x_test")
        if found is not None and len(found) == 3:
            return 1, *found[1:]
        if found is not None and len(found) == 4 and found[3] in (1, 3):
            return found[3], found[1], found[2]
        return None  # load reports what is wrong with the archive

    def load(self, split: Literal["train", "test"], data_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = read_npz(self.file, split, self.num_classes, self.input_shape())
        if self.num_classes is None:
            others = [read_labels(self.file, s) for s in _SPLITS if s != split]
            self.num_classes = int(max(np.max(y, initial=-1) for y in (labels, *others))) + 1
        if self.num_classes < 2:
            raise DataError(f"{self.file}: its labels hold one class only: with one class every prediction is right, "
                            "so no accuracy means anything; give at least two classes")
        return to_tensors(images, labels)


class CIFAR100(CIFAR10):
    """CIFAR-100: 50,000 training and 10,000 test 32×32 colour images in 100 classes."""

    name = "cifar100"
    num_classes = 100
    classes = ()  # CIFAR-10's names do not apply; results name classes by index
    npz_name, folder, title = "cifar100.npz", "cifar-100-python", "CIFAR-100"
    source = "CIFAR100"


class SVHN(Torchvision):
    """SVHN (street-view house numbers): 73,257 training and 26,032 test 32×32 colour digits in 10 classes."""

    name = "svhn"
    num_classes = 10
    sizes = {"train": 73_257, "test": 26_032}
    npz_name, folder, title = "svhn.npz", "train_32x32.mat / test_32x32.mat", "SVHN"

    def from_torchvision(self, split: str, root: str) -> tuple[np.ndarray, np.ndarray]:
        import torchvision  # here, not at the top: startup time

        data = torchvision.datasets.SVHN(root, split=split, download=self.download)
        return data.data.transpose(0, 2, 3, 1), np.asarray(data.labels)  # torchvision keeps SVHN as NCHW


@hookimpl
def arena_register_datasets(register) -> None:
    for cls in (ImageFolder, NPZ, CIFAR100, SVHN):
        register(cls)

