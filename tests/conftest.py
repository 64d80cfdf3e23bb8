"""Shared fixtures: real CIFAR-10 from ARENA_DATA_DIR, an isolated weights cache per test, tiny scenarios."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from arena.cli import main
from arena.matchups import Arena
from arena.records import Matchup
from arena.registry import Registry, load_registry
from arena.scenario import load_scenario
from arena.store import Store
from arena.training import WeightsCache

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    # The README runs the tests with ARENA_DATA_DIR=../shared/data; make it absolute so tests may change folder.
    data = os.environ.get("ARENA_DATA_DIR")
    if data:
        os.environ["ARENA_DATA_DIR"] = str(Path(data).resolve())
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", 0))
    if workers:  # pytest-xdist: the workers (and the processes a test starts) share the cores, never oversubscribe
        threads = str(max(1, (os.cpu_count() or 1) // workers))
        os.environ.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        torch.set_num_threads(int(threads))


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test trains into its own weights cache, so no test depends on another's leftovers."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("ARENA_CACHE_DIR", str(cache))
    return cache


@pytest.fixture(scope="session")
def scenario_data_dir() -> Path:
    """The folder holding the real CIFAR-10 (``ARENA_DATA_DIR``), as a scenario without ``data_dir`` resolves it."""
    folder = os.environ.get("ARENA_DATA_DIR")
    if not folder:
        pytest.fail("set ARENA_DATA_DIR to the folder holding cifar10.npz (see README.md)")
    return Path(folder)


@pytest.fixture(scope="session")
def registry():
    return load_registry()


def tiny(**overrides: Any) -> dict[str, Any]:
    """A scenario on a small slice of the real CIFAR-10: 1 epoch on 2,000 training images, 200 test images."""
    scenario = {
        "name": "tiny",
        "seed": 0,
        "dataset": {"name": "cifar10", "split": "test", "samples": 200, "train_samples": 2000},
        "threat_model": {"norm": "linf", "eps": 0.1},
        "models": [{"name": "cnn", "train": {"epochs": 1}}],
        "defenses": ["none"],
        "attacks": ["fgsm", {"name": "pgd", "steps": 3}],
        "batch_size": 100,
    }
    scenario.update(overrides)
    return scenario


def write_scenario(folder: Path, scenario: dict[str, Any] | str, name: str = "scenario.yaml") -> Path:
    """Write a scenario (a mapping, or raw YAML text to test line numbers) and return its path."""
    path = folder / name
    path.write_text(scenario if isinstance(scenario, str) else yaml.safe_dump(scenario, sort_keys=False))
    return path


def play(folder: Path, registry: Registry, scenario: dict[str, Any], cache: Path | None = None) -> tuple[Store, str]:
    """Play ``scenario`` into ``folder/results`` with the weights cache at ``cache`` (default ``folder/cache``);
    returns the store and the run id."""
    arena = Arena(load_scenario(write_scenario(folder, scenario), registry), registry, folder / "results",
                  cache=WeightsCache(cache or folder / "cache"), progress=False)
    run_id = arena.play()
    return arena.store, run_id


def run_cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """Run the ``arena`` command in this process; returns exit code, stdout and stderr."""
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def wait_for_matchups(db: Path, count: int, process: subprocess.Popen, timeout: float = 300) -> None:
    """Wait until the store at ``db`` holds ``count`` matchups (read-only, as another process writes it) or
    ``process`` has ended."""
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        try:
            with sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True) as con:
                if con.execute("SELECT count(*) FROM matchups").fetchone()[0] >= count:
                    return
        except sqlite3.Error:
            pass
        time.sleep(0.05)


def matchup(attack: str, robust: tuple, clean: tuple = (1, 1, 1, 1, 1, 1, 0, 0), defense: str = "none",
            status: str = "ok", passes: tuple[int, int] | None = None, attacked: tuple | None = None,
            checks: dict[str, Any] | None = None, after: tuple[str, ...] = (), **gradient: Any) -> Matchup:
    """A hand-made matchup of 8 samples: per-sample clean and robust correctness, how its gradients were got, and
    optionally its passes (forward, backward), the samples it attacked, its checks and the attacks it cascaded after."""
    clean, robust = np.array(clean, bool), np.array(robust, bool)
    plugin = attack.split("_")[0]
    return Matchup(model="cnn", defense=defense, attack=attack, params={"attack": {"plugin": plugin}}, status=status,
                   samples=len(clean), wall_time_s=1.0, gradient=gradient, clean_accuracy=clean.mean(),
                   robust_accuracy=robust.mean() if status == "ok" else None,
                   clean_correct=clean, robust_correct=robust if status == "ok" else None,
                   attacked=None if attacked is None else np.array(attacked, bool),
                   forward_passes=passes[0] if passes else None, backward_passes=passes[1] if passes else None,
                   checks=checks or {}, cascade_after=list(after))
