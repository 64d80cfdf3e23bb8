"""Shared fixtures: real CIFAR-10 from ARENA_DATA_DIR, an isolated weights cache per test, tiny scenarios."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
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


def wait_for_matchups(db: Path, count: int, process: subprocess.Popen, timeout: float = 900) -> None:
    """Wait until the store at ``db`` holds ``count`` matchups (read-only, as another process writes it) or
    ``process`` has ended; ``timeout`` is only a guard against a hang (a loaded machine is slow, never wrong)."""
    deadline = time.monotonic() + timeout
    while process.poll() is None:
        try:
            with sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True) as con:
                if con.execute("SELECT count(*) FROM matchups").fetchone()[0] >= count:
                    return
        except sqlite3.Error:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"{db} held fewer than {count} matchups after {timeout:.0f} s")
        time.sleep(0.05)


#: The ``arena`` command with one function wrapped to say on stderr that it was reached and then wait (before or
#: after calling the real one), so that a test can press Ctrl-C exactly there:
#: ``python -c PAUSE module:attribute before|after ARGV``.
PAUSE = """
import importlib, sys, time
from arena.__main__ import run
where, when, *argv = sys.argv[1:]
module, _, path = where.partition(":")
*owner_path, name = path.split(".")
owner = importlib.import_module(module)
for part in owner_path:
    owner = getattr(owner, part)
real = getattr(owner, name)
def paused(*args, **kwargs):
    result = real(*args, **kwargs) if when == "after" else None
    print("arena-test: paused at", where, file=sys.stderr, flush=True)
    time.sleep(900)
    return result if when == "after" else real(*args, **kwargs)
setattr(owner, name, paused)
sys.argv = ["arena", *argv]
run()
"""

def press_ctrl_c(argv: list[str], pause: tuple[str, str] | None, folder: Path) -> tuple[int, list[str]]:
    """Run ``arena ARGV`` in a session of its own, wait until it reaches ``pause`` (``(module:attribute, "before" or
    "after")``; None: the imports), press Ctrl-C as a terminal does (SIGINT to the whole process group) and return
    the exit status and the stderr lines (import timings left out). Waits on events, never on a clock."""
    command = ["-X", "importtime", "-m", "arena", *argv] if pause is None else ["-c", PAUSE, *pause, *argv]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, *command], cwd=folder, env=env, text=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    reached, lines = threading.Event(), []

    def read() -> None:
        for line in proc.stderr:
            lines.append(line.rstrip("\n"))
            if line.startswith("arena-test: paused") or re.search(r"\| +torch\.nn$", line):
                reached.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert reached.wait(600), f"never reached {pause or 'the imports'}: {lines[-20:]}"
        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(600)
    finally:
        with contextlib.suppress(ProcessLookupError):  # whatever the run left in its group (Ray's processes)
            os.killpg(proc.pid, signal.SIGKILL)
    reader.join(60)
    return code, [line for line in lines if not line.startswith(("import time:", "arena-test: paused"))]


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
