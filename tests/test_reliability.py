"""Bad input and faults, as a hostile user or a shared cluster brings them.

The catalogue: every bad input is a real file or command; each must exit 2 with one message naming the file, field
or option and the fix, print no traceback, and start or write nothing. The faults: kill -9, Ctrl-C, two writers of
one cached weights file, a full disk, a half-made store; each must lose nothing and resume to the numbers of an
uninterrupted run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, press_ctrl_c, tiny, wait_for_matchups

from arena.cli import main
from arena.store import Store
from arena.training import WeightsCache

Setup = Callable[[Path], list[str]]


def _scenario(folder: Path, data: dict | str, name: str = "s.yaml") -> Path:
    path = folder / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def run_with(**overrides) -> Setup:
    """``arena run`` on the tiny scenario with some fields replaced (``dataset`` entries are merged)."""

    def setup(folder: Path) -> list[str]:
        data = tiny()
        for key, value in overrides.items():
            data[key] = {**data[key], **value} if key == "dataset" else value
        return ["run", str(_scenario(folder, data))]

    return setup


def text(body: str, name: str = "s.yaml", encoding: str = "utf-8") -> Setup:
    def setup(folder: Path) -> list[str]:
        (folder / name).write_bytes(body.encode(encoding))
        return ["run", str(folder / name)]

    return setup


def with_data(arrays: Callable[[], dict[str, np.ndarray]] | None, raw: bytes | None = None, **dataset) -> Setup:
    """A data folder holding a damaged ``cifar10.npz``, and a scenario reading it."""

    def setup(folder: Path) -> list[str]:
        data = folder / "data"
        data.mkdir()
        if raw is not None:
            (data / "cifar10.npz").write_bytes(raw)
        elif arrays is not None:
            np.savez(data / "cifar10.npz", **arrays())
        return run_with(dataset={"data_dir": str(data), "samples": None, "train_samples": None, **dataset})(folder)

    return setup


def good_arrays(**replace) -> Callable[[], dict[str, np.ndarray]]:
    def arrays() -> dict[str, np.ndarray]:
        rng = np.random.default_rng(0)
        found = {
            "x_train": rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8),
            "y_train": np.arange(40) % 10,
            "x_test": rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8),
            "y_test": np.arange(20) % 10,
        }
        found.update(replace)
        return {k: v for k, v in found.items() if v is not None}

    return arrays


def plugin_file(name: str, body: str, entry: str | None = None, inside: bool = True) -> Setup:
    def setup(folder: Path) -> list[str]:
        where = folder if inside else folder.parent
        (where / name).write_text(body)
        return run_with(plugins=[entry or (name if inside else f"../{name}")])(folder)

    return setup


def command(*args: str, store: str | None = None) -> Setup:
    """A command on a results folder prepared by ``store``: ``text`` (a text file named arena.db), ``folder`` (a
    folder named arena.db), ``link`` (a link to a text file), or ``empty`` (a store with no run)."""

    def setup(folder: Path) -> list[str]:
        results = folder / "results"
        if store:
            results.mkdir()
            db = results / "arena.db"
            if store == "text":
                db.write_text("these are my notes, not a database\n")
            elif store == "folder":
                db.mkdir()
            elif store == "link":
                (folder / "notes.txt").write_text("notes\n")
                db.symlink_to(folder / "notes.txt")
            elif store == "empty":
                Store(results).close()
        return [arg.replace("{results}", str(results)).replace("{folder}", str(folder)) for arg in args]

    return setup


PATH_PLUGIN = """
from pathlib import Path
import torch
from arena import Model, Param, hookimpl

class FromFile(Model):
    name = "from_file"
    pretrained = True
    params = {"checkpoint": Param(Path, help="weights file")}
    def build(self, num_classes):
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3072, num_classes))
    def identity(self):
        return str(self.checkpoint)

@hookimpl
def arena_register_models(register):
    register(FromFile)
"""


def missing_checkpoint(folder: Path) -> list[str]:
    (folder / "from_file.py").write_text(PATH_PLUGIN)
    models = [{"name": "from_file", "checkpoint": "missing.pt"}]
    return ["run", str(_scenario(folder, {**tiny(), "plugins": ["from_file.py"], "models": models}))]


def absolute_plugin(folder: Path) -> list[str]:
    (folder.parent / "abs.py").write_text("")
    return run_with(plugins=[str(folder.parent / "abs.py")])(folder)


def option_file(option: str) -> Setup:
    """``arena run`` with ``option`` naming a file where a folder belongs."""

    def setup(folder: Path) -> list[str]:
        (folder / "a-file.txt").write_text("x")
        return [*run_with()(folder), option, str(folder / "a-file.txt")]

    return setup


def run_into_link(folder: Path) -> list[str]:
    command("x", store="link")(folder)
    return [*run_with()(folder), "--results", str(folder / "results")]


BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 10)}]\n" for p, n in zip("abcdefg", "bcdefgh")
)

CATALOGUE: list[tuple[str, Setup, str]] = [
    # the scenario file itself
    ("missing file", lambda f: ["run", str(f / "nope.yaml")], r"nope\.yaml: scenario file not found"),
    ("a folder", lambda f: ["validate", str(f)], r": scenario file not found \(it is not a file\)"),
    ("not UTF-8", text("name: caf\xe9\n", encoding="latin-1"), r"s\.yaml: not UTF-8 text .*save the scenario as UTF-8"),
    ("malformed YAML", text("name: [unclosed\n"), r"s\.yaml:\d+: malformed YAML"),
    ("recursive alias", text("name: &a [*a]\n"), r"s\.yaml: malformed YAML: a recursive alias"),
    ("alias bomb", text(BOMB), r"s\.yaml: malformed YAML: .*alias bomb"),
    (
        "duplicate key",
        text("name: a\nseed: 1\nseed: 2\n"),
        r"s\.yaml:3: malformed YAML: duplicate key 'seed' \(first on line 2\)",
    ),
    ("a list, not a mapping", text("- name: a\n"), r"s\.yaml:1: \(top level\): a scenario is a YAML mapping"),
    ("empty file", text(""), r"s\.yaml:1: \(top level\): a scenario is a YAML mapping"),
    ("no threat model", run_with(threat_model=None), r"s\.yaml:\d+: threat_model: Input should be"),
    (
        "negative eps",
        run_with(threat_model={"norm": "linf", "eps": -0.1}),
        r"threat_model\.eps: Input should be greater than 0",
    ),
    (
        "infinite eps",
        text(yaml.safe_dump({**tiny(), "threat_model": {"norm": "linf", "eps": "INF"}}).replace("INF", ".inf")),
        r"threat_model\.eps: Input should be a finite number",
    ),
    (
        "L∞ eps of 1e9",
        text(yaml.safe_dump(tiny()).replace("eps: 0.1", "eps: 1.0e9")),
        r"threat_model\.eps: L∞ ε = 1e\+09 .*use ε < 1",
    ),
    (
        "L2 eps beyond the diameter",
        run_with(threat_model={"norm": "l2", "eps": 100}),
        r"threat_model\.eps: L2 ε = 100 is more than the diameter",
    ),
    (
        "unknown norm",
        run_with(threat_model={"norm": "l1", "eps": 0.1}),
        r"threat_model\.norm: Input should be 'linf' or 'l2'",
    ),
    ("a seed beyond 64 bits", run_with(seed=2**70), r"seed: Input should be less than 18446744073709551616"),
    (
        "samples beyond the split",
        run_with(dataset={"samples": 20000}),
        r"dataset\.samples: 20000 is more than the 10000 images",
    ),
    (
        "train_samples beyond the split",
        run_with(dataset={"train_samples": 60000}),
        r"dataset\.train_samples: 60000 is more than the 50000",
    ),
    (
        "misspelt dataset field",
        run_with(dataset={"sample": 10}),
        r"dataset\.sample: unknown field 'sample'; did you mean 'samples'\?",
    ),
    ("unknown attack", run_with(attacks=["fsgm"]), r"attacks\[0\]\.name: unknown attack 'fsgm'; did you mean 'fgsm'\?"),
    ("unknown model", run_with(models=["cnm"]), r"models\[0\]\.name: unknown model 'cnm'; did you mean 'cnn'\?"),
    (
        "typo inside source",
        run_with(attacks=[{"name": "fgsm", "source": {"modle": "cnn"}}]),
        r"attacks\[0\]\.source\.modle: unknown field 'modle'; did you mean 'model'\?",
    ),
    (
        "unknown source model",
        run_with(attacks=[{"name": "fgsm", "source": {"model": "resnet"}}]),
        r"attacks\[0\]\.source\.model: unknown model of this scenario 'resnet'",
    ),
    (
        "a word for a number",
        run_with(attacks=[{"name": "pgd", "steps": "ten"}]),
        r"attacks\[0\]\.steps: Input should be a valid integer",
    ),
    (
        "misspelt attack parameter",
        run_with(attacks=[{"name": "pgd", "stpes": 3}]),
        r"attacks\[0\]\.stpes: unknown field 'stpes'; did you mean 'steps'\?",
    ),
    ("zero batch size", run_with(batch_size=0), r"batch_size: Input should be greater than or equal to 1"),
    ("misspelt evaluation", run_with(evaluation="casade"), r"evaluation: Input should be 'full' or 'cascade'"),
    (
        "unknown suite version",
        run_with(attacks=[{"name": "autoattack", "version": "plus"}]),
        r"attacks\[0\]\.version: Input should be 'standard' or 'rand'",
    ),
    ("one label twice", run_with(attacks=["fgsm", "fgsm"]), r"attacks\[1\]: 'fgsm' appears twice"),
    (
        "two training defenses",
        run_with(defenses=[{"chain": ["art.madry_pgd", "art.fbf"]}]),
        r"defenses\[0\]: at most one training-time defense",
    ),
    (
        "a word for a learning rate",
        run_with(models=[{"name": "cnn", "train": {"lr": "fast"}}]),
        r"models\[0\]\.train\.lr: Input should be a valid number",
    ),
    ("models as a string", run_with(models="cnn"), r"models: Input should be a valid list"),
    (
        "a checkpoint that does not exist",
        missing_checkpoint,
        r"models\[0\]\.checkpoint: no such file .*missing\.pt; give a path relative to the scenario's folder",
    ),
    # plugins a scenario loads
    (
        "a plugin file outside the scenario's folder",
        plugin_file("outside.py", "", inside=False),
        r"plugins\[0\]: .*outside\.py is outside the scenario's folder .*--allow-plugins-outside",
    ),
    ("an absolute plugin path", absolute_plugin, r"plugins\[0\]: .*abs\.py is outside the scenario's folder"),
    ("a missing plugin file", run_with(plugins=["missing.py"]), r"plugins\[0\]: no such file .*missing\.py"),
    (
        "a module that is not installed",
        run_with(plugins=["no_such_module_xyz"]),
        r"plugins\[0\]: 'no_such_module_xyz' is not an installed module",
    ),
    (
        "a plugin that is also an entry point",
        run_with(plugins=["arena_plugins.fgsm"]),
        r"plugins: plugin module 'arena_plugins\.fgsm' is already loaded as the entry point 'fgsm'",
    ),
    (
        "a plugin file that does not parse",
        plugin_file("broken.py", "def (:\n"),
        r"plugins: cannot load plugin module .*broken\.py.*SyntaxError",
    ),
    # the data
    (
        "a truncated archive",
        with_data(None, raw=b"PK\x03\x04 truncated"),
        r"cifar10\.npz: cannot be read as an \.npz archive .*copy it again",
    ),
    (
        "a missing array",
        with_data(good_arrays(y_test=None)),
        r"cifar10\.npz: no array y_test \(it has: .*\); expected x_train",
    ),
    (
        "images of the wrong shape",
        with_data(good_arrays(x_test=np.zeros((20, 32, 32), np.uint8))),
        r"cifar10\.npz: x_test has shape \(20, 32, 32\); expected \(N, 32, 32, 3\)",
    ),
    (
        "labels out of range",
        with_data(good_arrays(y_test=np.arange(20))),
        r"cifar10\.npz: y_test holds labels from 0 to 19; expected class indices 0 to 9",
    ),
    (
        "images already in [0, 1]",
        with_data(good_arrays(x_test=np.zeros((20, 32, 32, 3), np.float32))),
        r"cifar10\.npz: x_test is float32; expected uint8 .*divided by 255 again",
    ),
    ("no data and no download", with_data(None, download=False), r"CIFAR-10 not found: looked for .*cifar10\.npz"),
    # options
    ("an unknown device", lambda f: [*run_with()(f), "--device", "tpu"], r"--device tpu: not a device; use cpu, cuda"),
    (
        "a cache folder that is a file",
        option_file("--cache-dir"),
        r"weights cache .*a-file\.txt is a file, not a folder; pass --cache-dir FOLDER",
    ),
    (
        "a results folder that is a file",
        option_file("--results"),
        r"results folder .*a-file\.txt is a file; pass --results FOLDER",
    ),
    # the results store
    (
        "a store that is a text file",
        command("leaderboard", "--results", "{results}", store="text"),
        r"arena\.db is not an arena results store \(not an SQLite database\)",
    ),
    (
        "a store that is a folder",
        command("leaderboard", "--results", "{results}", store="folder"),
        r"arena\.db is not a file",
    ),
    (
        "a store linked to a text file",
        command("report", "--results", "{results}", store="link"),
        r"arena\.db is not an arena results store",
    ),
    (
        "no store",
        command("leaderboard", "--results", "{folder}/nowhere"),
        r"no results store at .*nowhere/arena\.db; run `arena run SCENARIO` first",
    ),
    (
        "an unknown run",
        command("leaderboard", "--results", "{results}", "--run", "nope", store="empty"),
        r"no run 'nope' in .*arena\.db",
    ),
    (
        "report of an unknown run",
        command("report", "nope", "--results", "{results}", store="empty"),
        r"no run 'nope' in .*arena\.db",
    ),
    ("run into a store linked to text", run_into_link, r"arena\.db is not an arena results store"),
]
if not torch.cuda.is_available():
    CATALOGUE.append(
        ("cuda without a GPU", lambda f: [*run_with()(f), "--device", "cuda"], r"--device cuda: no CUDA GPU is visible")
    )


@pytest.mark.parametrize(("setup", "expected"), [c[1:] for c in CATALOGUE], ids=[c[0] for c in CATALOGUE])
def test_bad_input_is_one_clear_message_exit_2_and_nothing_started(setup, expected, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "case"
    folder.mkdir()
    monkeypatch.chdir(folder)
    cache = tmp_path / "cache-untouched"
    monkeypatch.setenv("ARENA_CACHE_DIR", str(cache))
    argv = setup(folder)
    if argv[0] == "run" and "--results" not in argv:
        argv += ["--results", str(folder / "results")]
    before = {p for p in folder.rglob("*")}
    code = main(argv + ["-q"]) if argv[0] in ("run", "validate") else main(argv)
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) >= 1
    assert err.startswith("arena: error: "), err
    assert re.search(expected, err), err
    assert not cache.exists(), "no weights were trained or cached"
    # SQLite's side files of a WAL store may appear when it is read; nothing else may
    after = {p for p in folder.rglob("*") if not p.name.endswith(("-wal", "-shm"))}
    assert after == {p for p in before if not p.name.endswith(("-wal", "-shm"))}, "nothing was written"


def test_the_catalogue_is_large_enough():
    assert len(CATALOGUE) >= 40


def test_yaml_reads_numbers_as_researchers_write_them(tmp_path, registry):
    from arena.scenario import load_scenario

    body = (
        "name: numbers\ndataset: {samples: 100, train_samples: 1000}\nthreat_model: {norm: linf, eps: 1.0e-1}\n"
        "models: [{name: cnn, train: {epochs: 1, lr: 1e-4}}]\nattacks: [fgsm]\n"
    )
    scenario = load_scenario(_scenario(tmp_path, body), registry)
    assert scenario.threat.eps == 0.1 and scenario.models[0].train.lr == 1e-4


# ---- faults ----------------------------------------------------------------------------------------------------


def _cli(folder: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "arena", *args],
        cwd=folder,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _per_sample(results: Path) -> dict[tuple[str, str, str], list[bool]]:
    store = Store(results, readonly=True)
    run = store.runs()[0]
    return {(m.model, m.defense, m.attack): m.robust_correct.tolist() for m in store.matchups(run.id)}


#: Four matchups, each PGD one slow enough (50 steps of batch 20) for a signal sent after the first to land mid-run.
SLOW = tiny(
    dataset={"name": "cifar10", "split": "test", "samples": 100, "train_samples": 2000},
    attacks=[
        "fgsm",
        {"name": "pgd", "steps": 10, "label": "pgd_a"},
        {"name": "pgd", "steps": 10, "label": "pgd_b"},
        {"name": "pgd", "steps": 10, "label": "pgd_c"},
    ],
    batch_size=20,
)


def _run_slow(folder: Path, cache: Path) -> subprocess.Popen:
    """``arena run`` of ``SLOW`` in a process of its own, into ``folder/r``."""
    path = _scenario(folder, SLOW)
    return _cli(folder, "run", str(path), "--results", str(folder / "r"), "--cache-dir", str(cache), "-q",
                "--no-report")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run of ``SLOW`` (its cache is shared by the fault tests, so they only attack)."""
    folder = tmp_path_factory.mktemp("reference")
    done = _run_slow(folder, folder / "cache")
    assert done.wait(600) == 0, done.stderr.read()
    return folder, _per_sample(folder / "r")


def _interrupt(folder: Path, reference_folder: Path, sig: int) -> subprocess.Popen:
    """Start a run of ``SLOW`` and send ``sig`` once its first matchup is stored."""
    proc = _run_slow(folder, reference_folder / "cache")
    wait_for_matchups(folder / "r" / "arena.db", 1, proc)
    proc.send_signal(sig)
    proc.wait(600)
    return proc


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill -9", "ctrl-c"])
def test_an_interrupted_run_keeps_what_it_finished_and_resumes_to_the_same_numbers(tmp_path, reference, sig):
    ref_folder, expected = reference
    proc = _interrupt(tmp_path, ref_folder, sig)
    err = proc.stderr.read()
    kept = Store(tmp_path / "r", readonly=True)
    run = kept.runs()[0]
    assert run.status == "interrupted", "a run whose process is gone is not left `running`"
    finished = kept.matchups(run.id)
    assert 1 <= len(finished) < 4
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert "interrupted; every finished matchup is kept" in err and "run the same command again" in err
    board = subprocess.run(
        [sys.executable, "-m", "arena", "leaderboard", "--results", str(tmp_path / "r"), "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    [row] = json.loads(board.stdout)["rows"]
    assert row["rank"] is None and "missing" in row.values(), "an incomplete row is never ranked silently"
    again = _cli(
        tmp_path,
        "run",
        str(tmp_path / "s.yaml"),
        "--results",
        str(tmp_path / "r"),
        "--cache-dir",
        str(ref_folder / "cache"),
        "-q",
        "--no-report",
    )
    assert again.wait(600) == 0, again.stderr.read()
    store = Store(tmp_path / "r", readonly=True)
    latest = store.runs()[0]
    assert latest.status == "complete"
    resumed = {
        (m.model, m.defense, m.attack): (m.robust_correct.tolist(), m.reused_from) for m in store.matchups(latest.id)
    }
    assert {k: v[0] for k, v in resumed.items()} == expected, "resumed numbers equal the uninterrupted run's"
    assert sum(1 for _, origin in resumed.values() if origin == run.id) == len(finished), "finished work is reused"


#: Where Ctrl-C is pressed: a function to pause in (``module:attribute``, and whether before or after calling it), or,
#: for the imports, torch.nn as ``-X importtime`` reports it done (torch itself is then still importing).
CTRL_C_POINTS = {
    "imports": None,
    "training": ("arena.training:Trainer.fit", "before"),
    "an attack batch": ("arena_plugins.pgd:PGD.__call__", "before"),
    "a store write": ("arena.store:Store.add_matchup", "before"),
    "the run's outputs": ("arena.matchups:Arena._outputs", "before"),
}


@pytest.mark.parametrize("point", list(CTRL_C_POINTS))
def test_ctrl_c_anywhere_is_one_line_nothing_lost_and_exit_130(point, tmp_path, reference):
    ref_folder, _ = reference
    cache = tmp_path / "cache" if point == "training" else ref_folder / "cache"
    argv = ["run", str(_scenario(tmp_path, SLOW)), "--results", str(tmp_path / "r"), "--cache-dir", str(cache), "-q",
            "--no-report"]
    code, err = press_ctrl_c(argv, CTRL_C_POINTS[point], tmp_path)
    assert code == 130, (code, err)
    assert len(err) == 1 and err[0].startswith("arena: interrupted; ") and "run the same command again" in err[0], err
    if point == "imports":
        assert not (tmp_path / "r").exists(), "nothing started"
        return
    store = Store(tmp_path / "r", readonly=True)
    assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    [run] = store.runs()
    finished = store.matchups(run.id)
    assert all(m.status == "ok" for m in finished)
    if point == "the run's outputs":  # every matchup stored and the run marked complete before its outputs
        assert run.status == "complete" and len(finished) == 4
    else:
        assert run.status == "interrupted" and len(finished) < 4, "a run whose process stopped is never left running"


def test_ctrl_c_during_a_libraries_string_exec_still_exits_130_under_python_m(tmp_path):
    """CPython kills a ``python -m`` process by SIGINT at exit once a KeyboardInterrupt ended an ``exec`` of a string,
    even a caught one (libraries exec strings to build classes); the arena's status stays 130."""
    (tmp_path / "interrupted_in_exec.py").write_text(
        "import arena.__main__, arena.cli\n"
        "def main(argv=None):\n"
        "    try:\n"
        "        exec('raise KeyboardInterrupt')\n"
        "    except KeyboardInterrupt:\n"
        "        return 130\n"
        "arena.cli.main = main\n"
        "arena.__main__.run()\n",
        encoding="utf-8",
    )
    done = subprocess.run([sys.executable, "-m", "interrupted_in_exec"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 130, (done.returncode, done.stderr)


def test_a_full_disk_is_one_message_and_the_finished_matchups_stay(tmp_path, reference, capsys, monkeypatch):
    ref_folder, expected = reference
    original = Store.add_matchup

    def fill_up_after_one(self, run_id, m):
        original(self, run_id, m)
        pages = self.db.execute("PRAGMA page_count").fetchone()[0]
        self.db.execute(f"PRAGMA max_page_count = {pages}")  # SQLite's own "database or disk is full"

    monkeypatch.setattr(Store, "add_matchup", fill_up_after_one)
    path = _scenario(tmp_path, SLOW)
    argv = ["run", str(path), "--results", str(tmp_path / "r"), "--cache-dir", str(ref_folder / "cache"), "-q",
            "--no-report"]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "could not be written (database or disk is full); every matchup finished before is kept" in err
    monkeypatch.setattr(Store, "add_matchup", original)
    assert main(argv) == 0
    assert _per_sample_latest(tmp_path / "r") == expected


def _per_sample_latest(results: Path) -> dict:
    store = Store(results, readonly=True)
    return {(m.model, m.defense, m.attack): m.robust_correct.tolist() for m in store.matchups(store.runs()[0].id)}


def test_a_half_made_store_is_rebuilt_when_empty_and_refused_when_it_holds_runs(tmp_path, capsys):
    db = sqlite3.connect(tmp_path / "arena.db")
    db.execute("CREATE TABLE runs (id TEXT PRIMARY KEY)")  # an older arena crashed between its CREATE statements
    db.commit()
    db.close()
    store = Store(tmp_path)
    assert store.db.execute("PRAGMA user_version").fetchone()[0] > 0 and store.runs() == []
    store.close()
    other = tmp_path / "other"
    other.mkdir()
    db = sqlite3.connect(other / "arena.db")
    db.execute("CREATE TABLE runs (id TEXT PRIMARY KEY)")
    db.execute("INSERT INTO runs VALUES ('precious')")
    db.commit()
    db.close()
    assert main(["run", str(REPO / "scenarios" / "quickstart.yaml"), "--results", str(other), "-q"]) == 2
    err = capsys.readouterr().err
    assert "was not created completely but holds runs; move it away" in err and "Traceback" not in err
    assert sqlite3.connect(other / "arena.db").execute("SELECT id FROM runs").fetchall() == [("precious",)]


def test_reading_never_migrates_or_switches_the_journal(tmp_path, capsys):
    from arena.tables import SCHEMA_VERSION

    Store(tmp_path).close()
    db = sqlite3.connect(tmp_path / "arena.db")
    db.execute("PRAGMA journal_mode=DELETE")
    db.execute("ALTER TABLE matchups DROP COLUMN checks")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION - 1}")
    db.commit()
    db.close()
    before = (tmp_path / "arena.db").read_bytes()
    assert main(["leaderboard", "--results", str(tmp_path)]) == 2
    assert "no run in" in capsys.readouterr().err, "an empty store is a clear message"
    assert (tmp_path / "arena.db").read_bytes() == before, "reading wrote nothing"


def test_two_writers_of_one_cached_weights_file_never_clash(tmp_path):
    script = (
        "import sys, torch\n"
        "from arena.training import WeightsCache\n"
        "cache, net = WeightsCache(sys.argv[1]), torch.nn.Linear(200, 200)\n"
        "for _ in range(40):\n"
        "    cache.save('same', net, {})\n"
        "    assert cache.load('same', torch.nn.Linear(200, 200))\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    for proc in procs:
        assert proc.wait(300) == 0, proc.stderr.read()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["same.json", "same.pt"], "no temporary file is left"


def test_the_cache_never_writes_through_a_planted_link_and_names_a_corrupt_file(tmp_path, caplog):
    cache, net = WeightsCache(tmp_path / "c"), torch.nn.Linear(4, 2)
    cache.root.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (cache.root / "k.tmp").symlink_to(victim)
    (cache.root / "k.pt").symlink_to(victim)
    cache.save("k", net, {})
    assert victim.read_text() == "keep me" and not (cache.root / "k.pt").is_symlink()
    assert cache.load("k", torch.nn.Linear(4, 2))
    (cache.root / "j.pt").write_bytes(b"not a checkpoint")
    with caplog.at_level("WARNING"):
        assert not cache.load("j", torch.nn.Linear(4, 2))
    [warning] = [r.getMessage() for r in caplog.records if "could not be loaded" in r.getMessage()]
    assert str(cache.root / "j.pt") in warning and "moved aside" in warning and "training again" in warning
    assert not (cache.root / "j.pt").exists()
