"""The cifar10 plugin reads the real data set (npz offline, torchvision otherwise) and explains where it looked."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny, write_scenario

from arena import DataError
from arena.scenario import DATA_ENV, load_scenario
from arena_plugins.cifar10 import CIFAR10


def test_the_real_cifar10_is_read_as_floats_in_0_1(scenario_data_dir):
    images, labels = CIFAR10(download=False).load("train", scenario_data_dir)
    assert images.shape == (50000, 3, 32, 32) and images.dtype == torch.float32
    assert 0 <= float(images.min()) and float(images.max()) <= 1
    assert labels[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3] and labels.dtype == torch.int64
    means = images[:, :, :, :].mean(dim=(0, 2, 3))
    assert torch.allclose(means, torch.tensor([0.4914, 0.4822, 0.4465]), atol=1e-3)
    test_images, test_labels = CIFAR10(download=False).load("test", scenario_data_dir)
    assert test_images.shape == (10000, 3, 32, 32) and torch.bincount(test_labels).tolist() == [1000] * 10


def test_missing_data_says_where_it_looked_and_how_to_provide_it(tmp_path):
    with pytest.raises(DataError) as error:
        CIFAR10(download=False).load("test", tmp_path / "empty")
    message = str(error.value)
    assert str(tmp_path / "empty" / "cifar10.npz") in message and "cifar-10-batches-py" in message
    assert "ARENA_DATA_DIR" in message and "download: false" in message


def test_a_run_without_data_starts_nothing(tmp_path, capsys, monkeypatch):
    from conftest import run_cli

    monkeypatch.setenv(DATA_ENV, str(tmp_path / "nowhere"))
    path = write_scenario(tmp_path, tiny(dataset={"name": "cifar10", "download": False}))
    code, out, err = run_cli(capsys, "run", str(path), "--results", str(tmp_path / "r"), "-q")
    assert code == 2 and "CIFAR-10 not found" in err and not (tmp_path / "r").exists()


def test_data_dir_comes_from_the_scenario_then_the_environment_then_the_cache(tmp_path, monkeypatch, registry):
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "env"))
    plain = load_scenario(write_scenario(tmp_path, tiny()), registry)
    assert plain.data_dir() == tmp_path / "env"
    named = tiny(dataset={"name": "cifar10", "data_dir": "here"})
    assert load_scenario(write_scenario(tmp_path, named, "named.yaml"), registry).data_dir() == tmp_path / "here"
    monkeypatch.delenv(DATA_ENV)
    assert plain.data_dir().name == "data" and "arena" in str(plain.data_dir())


def test_more_samples_than_the_split_holds_is_refused_before_any_work(tmp_path, capsys):
    from conftest import run_cli

    path = write_scenario(tmp_path, tiny(dataset={"name": "cifar10", "samples": 20000}))
    code, out, err = run_cli(capsys, "run", str(path), "--results", str(tmp_path / "r"), "-q")
    assert code == 2 and "dataset.samples: 20000 is more than the 10000 images of the test split of cifar10" in err
    assert not (tmp_path / "r").exists() and not (tmp_path / "cache").exists()
