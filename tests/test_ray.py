"""The Ray executor on a real local cluster (2 CPUs, started by the tests): the same per-sample results as one
process, a worker killed mid-task retried without a duplicate row, a killed driver resumed, the missing-Ray error."""

from __future__ import annotations

import importlib.util
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import press_ctrl_c, tiny, wait_for_matchups

from arena.cli import main
from arena.store import Store

ray = pytest.importorskip("ray", reason="Ray is an optional extra; the README's test command installs it")

PAIRS = ["none", {"name": "art.spatial_smoothing", "label": "median"}, {"name": "art.jpeg", "label": "jpeg"},
         {"name": "art.feature_squeezing", "label": "squeeze"}]

#: An attack that kills its worker process the first time it runs (a marker file remembers), then behaves as FGSM.
DYING = """
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from arena import Attack, hookimpl


class DiesOnce(Attack):
    name = "dies_once"

    def __call__(self, images, labels):
        marker = Path(__file__).with_name("died")
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            os._exit(1)
        x = images.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(self.model(x), labels), x)
        return (images + self.threat.eps * grad.sign()).clamp(0, 1).detach()


@hookimpl
def arena_register_attacks(register):
    register(DiesOnce)
"""


def scenario(folder: Path, **overrides) -> Path:
    data = tiny(defenses=PAIRS, dataset={"samples": 100, "train_samples": 1000},
                attacks=["fgsm", {"name": "pgd", "steps": 3}], batch_size=50)
    data.update(overrides)
    path = folder / "s.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def per_sample(results: Path) -> dict:
    store = Store(results, readonly=True)
    run = store.runs()[0]
    return {(m.model, m.defense, m.attack): m.robust_correct.tolist() for m in store.matchups(run.id)}


def rows_per_matchup(results: Path) -> list[int]:
    with sqlite3.connect(results / "arena.db") as db:
        return [n for (n,) in db.execute("SELECT count(*) FROM matchups GROUP BY run_id, model, defense, attack")]


@pytest.fixture(scope="module")
def cluster():
    """One local Ray cluster for the module, as a user's ``ray.init()`` would start it."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """The run in this process with one torch thread, as each Ray worker has: float sums split across threads
    differently give different last bits, so equal numbers need equal thread counts."""
    folder = tmp_path_factory.mktemp("local")
    path = scenario(folder)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["run", str(path), "--results", str(folder / "r"), "--cache-dir", str(folder / "cache"), "-q",
                     "--no-report"]) == 0
    finally:
        torch.set_num_threads(threads)
    return folder, per_sample(folder / "r")


def test_the_driver_killed_and_run_again_resumes(local, tmp_path):
    """First in the module: its `ray stop --force` ends every local cluster, so it runs before `cluster` starts one
    in this process (a driver whose cluster is gone exits a minute later, taking a pytest-xdist worker with it)."""
    folder, expected = local
    path = scenario(tmp_path)
    command = [sys.executable, "-m", "arena", "run", str(path), "--results", str(tmp_path / "r"), "--cache-dir",
               str(folder / "cache"), "-q", "--no-report", "--executor", "ray", "--workers", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    driver = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for_matchups(tmp_path / "r" / "arena.db", 2, driver)
    driver.send_signal(signal.SIGKILL)
    driver.wait(60)
    ray_cli = Path(sys.executable).with_name("ray")  # the killed driver's local cluster is left behind: stop it
    subprocess.run([str(ray_cli), "stop", "--force"], capture_output=True, timeout=120)
    first = Store(tmp_path / "r", readonly=True).runs()[0]
    kept = len(Store(tmp_path / "r", readonly=True).matchups(first.id))
    assert first.status == "interrupted" and kept < 8
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    store = Store(tmp_path / "r", readonly=True)
    latest = store.runs()[0]
    assert per_sample(tmp_path / "r") == expected
    assert sum(1 for m in store.matchups(latest.id) if m.reused_from == first.id) == kept


def test_ctrl_c_once_ray_has_started_is_one_line_and_exit_130(local, tmp_path):
    """Before ``cluster`` too: the driver starts its own local cluster, and stops it on Ctrl-C."""
    folder, _ = local
    argv = ["run", str(scenario(tmp_path)), "--results", str(tmp_path / "r"), "--cache-dir", str(folder / "cache"),
            "-q", "--no-report", "--executor", "ray", "--workers", "1"]
    code, err = press_ctrl_c(argv, ("ray:init", "after"), tmp_path)
    ours = [line for line in err if line.startswith("arena")]
    assert code == 130 and "Traceback" not in "\n".join(err), err
    assert len(ours) == 1 and ours[0].startswith("arena: interrupted; "), err
    [run] = Store(tmp_path / "r", readonly=True).runs()
    assert run.status == "interrupted"


def test_ray_stores_the_same_per_sample_results_as_one_process(cluster, local, tmp_path):
    folder, expected = local
    path = scenario(tmp_path)
    assert main(["run", str(path), "--results", str(tmp_path / "r"), "--cache-dir", str(tmp_path / "cache"), "-q",
                 "--no-report", "--executor", "ray", "--workers", "2"]) == 0
    assert per_sample(tmp_path / "r") == expected and len(expected) == 8
    assert rows_per_matchup(tmp_path / "r") == [1] * 8
    run = Store(tmp_path / "r", readonly=True).runs()[0]
    sources = {pair: w["source"] for pair, w in run.weights.items()}
    assert len(sources) == 4 and set(sources.values()) <= {"trained", "cache"}, sources


def test_a_worker_killed_mid_task_is_retried_without_a_duplicate_row(cluster, local, tmp_path):
    folder, _ = local
    (tmp_path / "dying.py").write_text(DYING)
    path = scenario(tmp_path, plugins=["dying.py"], attacks=["fgsm", "dies_once"], defenses=PAIRS[:2])
    assert main(["run", str(path), "--results", str(tmp_path / "r"), "--cache-dir", str(folder / "cache"), "-q",
                 "--no-report", "--executor", "ray", "--workers", "2"]) == 0
    assert (tmp_path / "died").exists(), "a worker did die"
    store = Store(tmp_path / "r", readonly=True)
    matchups = store.matchups(store.runs()[0].id)
    assert sorted((m.defense, m.attack, m.status) for m in matchups) == [
        ("median", "dies_once", "ok"), ("median", "fgsm", "ok"), ("none", "dies_once", "ok"), ("none", "fgsm", "ok")]
    assert rows_per_matchup(tmp_path / "r") == [1] * 4


def test_asking_for_ray_without_it_names_the_install_command(tmp_path, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    code = main(["run", str(scenario(tmp_path)), "--results", str(tmp_path / "r"), "--executor", "ray"])
    err = capsys.readouterr().err
    assert code == 2 and "--executor ray needs Ray, which is not installed here: pip install -e '.[ray]'" in err
    assert not (tmp_path / "r").exists()
