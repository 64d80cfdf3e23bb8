"""A user's own data and models: an image folder at 224×224 (colour) and 28×28 (grey), an .npz of grey arrays, timm and
torchvision architectures by name, the bundled ImageNet-style scenario end to end, and the one-line refusals (the
seed's CNN at another size, malformed arrays, a missing CIFAR-100)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from conftest import REPO, run_cli, write_scenario
from PIL import Image

from arena.store import Store
from arena_plugins.user_data import SVHN, ImageFolder

CLASSES = ("cat", "dog")


def image_folder(root: Path, per_class: int, mode: str = "RGB", sizes=((300, 260), (240, 320))) -> Path:
    """``root/<class>/<n>.png``: random images of assorted sizes, each class a different mean brightness."""
    rng = np.random.default_rng(0)
    for label, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for n in range(per_class):
            width, height = sizes[n % len(sizes)]
            shape = (height, width, 3) if mode == "RGB" else (height, width)
            pixels = rng.integers(0, 128, shape) + 100 * label
            Image.fromarray(pixels.astype(np.uint8), mode).save(root / name / f"{n}.png")
    return root


def one_problem(err: str) -> str:
    problems = [line for line in err.splitlines() if line.startswith("  ")]
    assert len(problems) == 1, err
    return problems[0]


def test_the_bundled_imagefolder_example_runs_end_to_end_at_224(tmp_path, capsys):
    image_folder(tmp_path / "images", per_class=2)
    torch.manual_seed(0)
    torch.save(timm.create_model("resnet18", num_classes=len(CLASSES)).state_dict(), tmp_path / "resnet18.pt")
    scenario = tmp_path / "imagefolder_example.yaml"
    shutil.copy(REPO / "scenarios" / "imagefolder_example.yaml", scenario)
    code, out, err = run_cli(capsys, "run", str(scenario), "--results", str(tmp_path / "r"), "-q")
    assert code == 0, err
    store = Store(tmp_path / "r")
    run = store.run()
    matchups = store.matchups(run.id)
    assert [m.status for m in matchups] == ["ok", "ok"] and run.samples == 4
    assert run.weights["timm/none"]["source"] == "pretrained" and run.threat.eps == pytest.approx(4 / 255)
    assert all(m.checks for m in matchups), "the checks ran on the first batch"
    assert matchups[0].clean_accuracy > 0 and matchups[1].backward_passes > 0, "PGD ran at 224×224"
    assert {e.clean.shape for m in matchups for e in store.examples(m)} <= {(3, 224, 224)}
    assert (tmp_path / "r" / "runs" / f"{run.id}.json").is_file()
    assert list((tmp_path / "r").rglob("leaderboard.html")) and list((tmp_path / "r").rglob("*.png")), "the report"
    code, out, err = run_cli(capsys, "leaderboard", "--results", str(tmp_path / "r"))
    assert code == 0 and "timm" in out, err


def test_grey_images_train_attack_and_report_at_28(tmp_path, capsys):
    """A 1-channel folder at 28×28 with torchvision's ResNet-18 (grey repeated to its 3-channel stem), trained by the
    arena for one epoch, attacked, stored, ranked and drawn."""
    image_folder(tmp_path / "digits", per_class=4, mode="L", sizes=((28, 28), (40, 36)))
    scenario = {
        "name": "grey", "dataset": {"name": "imagefolder", "root": "digits", "size": 28, "channels": 1},
        "threat_model": {"norm": "l2", "eps": 0.5},
        "models": [{"name": "torchvision", "arch": "resnet18", "size": 28, "channels": 1, "mean": [0.5],
                    "std": [0.25], "train": {"epochs": 1, "batch_size": 8}}],
        "attacks": ["fgsm", {"name": "pgd", "steps": 3}], "batch_size": 8,
    }
    code, out, err = run_cli(capsys, "run", str(write_scenario(tmp_path, scenario)), "--results",
                             str(tmp_path / "r"), "-q")
    assert code == 0, err
    store = Store(tmp_path / "r")
    run = store.run()
    assert run.weights["torchvision/none"]["source"] == "trained"
    assert [m.status for m in store.matchups(run.id)] == ["ok", "ok"]
    pictures = list((tmp_path / "r").rglob("*.png"))
    assert pictures, "the report drew the grey examples"


def test_imagefolder_takes_classes_round_robin_and_crops_to_size(tmp_path):
    image_folder(tmp_path / "images", per_class=3, mode="L", sizes=((50, 40),))
    images, labels = ImageFolder(root=tmp_path / "images", size=32, channels=1).load("test", tmp_path)
    assert images.shape == (6, 1, 32, 32) and images.dtype == torch.float32
    assert labels.tolist() == [0, 1, 0, 1, 0, 1], "samples: N covers every class"
    assert 0 <= float(images.min()) and float(images.max()) <= 1
    assert float(images[labels == 1].mean()) > float(images[labels == 0].mean()), "the images are the files'"


def grey_npz(path: Path, **overrides) -> Path:
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 256, (24, 28, 28), dtype=np.uint8), "y_train": np.arange(24) % 3,
              "x_test": rng.integers(0, 256, (12, 28, 28), dtype=np.uint8), "y_test": np.arange(12) % 3}
    np.savez(path, **{**arrays, **overrides})
    return path


def test_a_users_grey_npz_runs_end_to_end_with_a_timm_model(tmp_path, capsys):
    grey_npz(tmp_path / "digits.npz")
    scenario = {
        "name": "npz", "dataset": {"name": "npz", "file": "digits.npz"},
        "threat_model": {"norm": "linf", "eps": "8/255"},
        "models": [{"name": "timm", "arch": "resnet10t", "size": 28, "channels": 1, "mean": [0.5], "std": [0.5],
                    "train": {"epochs": 1, "batch_size": 12}}],
        "attacks": ["fgsm"], "batch_size": 12,
    }
    code, out, err = run_cli(capsys, "run", str(write_scenario(tmp_path, scenario)), "--results",
                             str(tmp_path / "r"), "-q", "--no-report")
    assert code == 0, err
    store = Store(tmp_path / "r")
    [matchup] = store.matchups(store.run().id)
    assert matchup.status == "ok" and matchup.samples == 12


@pytest.mark.parametrize("arrays, expected", [
    ({"x_test": np.zeros((12, 28, 28), np.float32)}, "x_test is float32; expected uint8"),
    ({"x_test": np.zeros((12, 28, 28, 5), np.uint8)}, "expected (N, H, W, C) with C 1 or 3"),
    ({"y_test": np.arange(11)}, "y_test has shape (11,)"),
    ({"y_train": np.arange(23)}, "y_train has shape (23,)"),  # read alone, to count the classes
])
def test_a_malformed_npz_is_one_line_and_exit_2(arrays, expected, tmp_path, capsys):
    grey_npz(tmp_path / "bad.npz", **arrays)
    scenario = {"name": "bad", "dataset": {"name": "npz", "file": "bad.npz"},
                "threat_model": {"norm": "linf", "eps": 0.1}, "attacks": ["fgsm"],
                "models": [{"name": "timm", "arch": "resnet10t", "size": 28, "channels": 1, "mean": [0.5],
                            "std": [0.5]}]}
    code, out, err = run_cli(capsys, "run", str(write_scenario(tmp_path, scenario)), "--results",
                             str(tmp_path / "r"), "-q")
    assert code == 2 and "Traceback" not in out + err and expected in err, err


def test_the_seed_cnn_refuses_another_size_at_validation(tmp_path, capsys):
    grey_npz(tmp_path / "digits.npz")
    scenario = {"name": "cnn", "dataset": {"name": "npz", "file": "digits.npz"},
                "threat_model": {"norm": "linf", "eps": 0.1}, "models": ["cnn"], "attacks": ["fgsm"]}
    code, out, err = run_cli(capsys, "validate", str(write_scenario(tmp_path, scenario)))
    assert code == 2 and "models[0].name: cnn takes 3×32×32 images" in one_problem(err) and "1×28×28" in err


@pytest.mark.parametrize("model, field, expected", [
    ({"name": "timm", "arch": "resnet81"}, "arch", "did you mean 'resnet18'"),
    ({"name": "torchvision", "arch": "resnet18", "size": 64}, "name", "set for 3×64×64 images"),
    ({"name": "timm", "arch": "resnet18", "channels": 1}, "mean", "state it for 1-channel images"),
])
def test_named_models_are_checked_at_validation(model, field, expected, tmp_path, capsys):
    image_folder(tmp_path / "images", per_class=1)
    scenario = {"name": "named", "dataset": {"name": "imagefolder", "root": "images"},
                "threat_model": {"norm": "linf", "eps": "4/255"}, "models": [model], "attacks": ["fgsm"]}
    code, out, err = run_cli(capsys, "validate", str(write_scenario(tmp_path, scenario)))
    assert code == 2 and f"models[0].{field}: " in err and expected in err, err


def test_a_folder_without_class_subfolders_is_one_line(tmp_path, capsys):
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "a.png")
    scenario = {"name": "flat", "dataset": {"name": "imagefolder", "root": "flat"},
                "threat_model": {"norm": "linf", "eps": "4/255"},
                "models": [{"name": "timm", "arch": "resnet18"}], "attacks": ["fgsm"]}
    code, out, err = run_cli(capsys, "validate", str(write_scenario(tmp_path, scenario)))
    assert code == 2 and "dataset.root: " in one_problem(err) and "has no class subfolders" in err


def test_cifar100_absent_offline_is_one_line_and_svhn_reads_its_npz(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ARENA_DATA_DIR", str(tmp_path / "data"))
    scenario = {"name": "c100", "dataset": {"name": "cifar100", "download": False, "samples": 10},
                "threat_model": {"norm": "linf", "eps": "8/255"}, "models": ["cnn"], "attacks": ["fgsm"]}
    code, out, err = run_cli(capsys, "run", str(write_scenario(tmp_path, scenario)), "--results",
                             str(tmp_path / "r"), "-q")
    assert code == 2 and "Traceback" not in out + err and not (tmp_path / "r").exists()
    assert "CIFAR-100 not found" in err and "cifar100.npz" in err and len(err.strip().splitlines()) == 1, err

    rng = np.random.default_rng(0)
    (tmp_path / "data").mkdir()
    np.savez(tmp_path / "data" / "svhn.npz", x_train=rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8),
             y_train=np.arange(4), x_test=rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8), y_test=np.arange(3))
    images, labels = SVHN(download=False).load("test", tmp_path / "data")
    assert images.shape == (3, 3, 32, 32) and labels.tolist() == [0, 1, 2]
