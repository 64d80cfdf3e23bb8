"""``arena verify``: a run played here verifies K/K; one sample altered in SQLite is named as not reproducible;
missing weights or plugin end in one line and exit 2; a batch replayed alone gives what the full run gave."""

from __future__ import annotations

import json
import shutil
import sqlite3
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import play, run_cli, tiny

from arena.standing import standing
from arena.store import Store
from arena.verify import Rebuilt, behind, find_entry

#: PGD with a random start: its result depends on how each batch was seeded.
PGD = {"name": "pgd", "steps": 3}
SCENARIO = tiny(name="verified", dataset={"name": "cifar10", "split": "test", "samples": 60, "train_samples": 2000},
                threat_model={"norm": "linf", "eps": 0.02}, attacks=["fgsm", PGD], batch_size=20,
                save_examples="all")


@pytest.fixture(scope="module")
def played(tmp_path_factory, registry) -> Path:
    """A run played here: FGSM and PGD-3 against the tiny CNN on 60 images, batches of 20, every example kept."""
    root = tmp_path_factory.mktemp("verify")
    play(root, registry, SCENARIO, cache=root / "cache")[0].close()
    return root


def copy_of(played: Path, tmp_path: Path) -> Path:
    """A copy of the played results folder, so a test may alter it."""
    shutil.copytree(played / "results", tmp_path / "results")
    return tmp_path / "results"


def test_a_run_played_here_verifies(played, tmp_path, capsys):
    results = copy_of(played, tmp_path)
    code, out, err = run_cli(capsys, "verify", "cnn+none", "--results", str(results), "--samples", "12",
                             "--cache-dir", str(played / "cache"), "--seed", "3")
    assert code == 0, err
    assert "cnn+none: verified (12/12, " in out
    merged = tmp_path / "merged"
    assert run_cli(capsys, "merge", str(results), "--results", str(merged))[0] == 0
    code, out, err = run_cli(capsys, "board", "--results", str(merged), "--format", "csv")
    assert code == 0 and "verified (12/12" in out, "the mark is merged and shown"
    assert run_cli(capsys, "board", "--results", str(merged), "--format", "robustbench", "--out",
                   str(tmp_path / "rb"))[0] == 0
    info = json.loads(next((tmp_path / "rb").rglob("*.json")).read_text())
    assert info["arena"]["verification"].startswith("verified (12/12") and info["arena"]["verify"] == \
        "arena verify cnn+none"
    site = tmp_path / "site"
    assert run_cli(capsys, "board", "--results", str(merged), "--format", "html", "--out", str(site))[0] == 0
    page = (site / "index.html").read_text()
    assert "verified (12/12" in page and "<code>arena verify cnn+none</code>" in page


def test_a_sample_altered_in_sqlite_is_not_reproducible(played, tmp_path, capsys):
    results = copy_of(played, tmp_path)
    db = sqlite3.connect(results / "arena.db")
    mid, clean, robust = db.execute("SELECT id, clean_correct, robust_correct FROM matchups WHERE attack = 'pgd'"
                                    ).fetchone()
    altered = np.frombuffer(robust, np.uint8).copy()
    sample = int(np.flatnonzero(np.frombuffer(clean, np.uint8))[0])
    altered[sample] = 1 - altered[sample]
    db.execute("UPDATE matchups SET robust_correct = ? WHERE id = ?", (altered.tobytes(), mid))
    db.commit()
    db.close()
    code, out, err = run_cli(capsys, "verify", "cnn+none", "--results", str(results), "--samples", "60",
                             "--cache-dir", str(played / "cache"))
    assert code == 1
    assert "not reproducible" in out
    assert err.strip().splitlines() == [f"DIFFERS: sample {sample}: pgd (run {_run(results)}) recorded "
                                        f"{'robust' if altered[sample] else 'broken'}, replayed "
                                        f"{'broken' if altered[sample] else 'robust'}"]
    code, out, _ = run_cli(capsys, "board", "--results", str(results))
    assert "not reproducible" in out


def _run(results: Path) -> str:
    store = Store.open_existing(results)
    try:
        return store.run().id
    finally:
        store.close()


def test_missing_weights_is_one_line(played, tmp_path, capsys):
    results = copy_of(played, tmp_path)
    code, out, err = run_cli(capsys, "verify", "cnn+none", "--results", str(results), "--cache-dir",
                             str(tmp_path / "empty"))
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert "are not in the weights cache" in err and "--train" in err


def test_missing_plugin_is_one_line(played, tmp_path, capsys):
    results = copy_of(played, tmp_path)
    db = sqlite3.connect(results / "arena.db")
    db.execute("UPDATE matchups SET params = replace(params, '\"plugin\": \"fgsm\"', '\"plugin\": \"gone\"')")
    db.commit()
    db.close()
    code, out, err = run_cli(capsys, "verify", "cnn+none", "--results", str(results), "--cache-dir",
                             str(played / "cache"))
    assert code == 2 and out == ""
    assert err.strip() == (f"arena: error: the attack plugin 'gone' that run {_run(results)} used is not installed "
                           "here; install it (or pass -p MODULE) and verify again")


def test_a_sample_replayed_alone_gives_the_full_runs_result(played):
    """Each sample alone, through the engine's replay of its own batch, against the stored full run: PGD starts from
    a random point, so this holds only because every batch is seeded on its own."""
    store = Store.open_existing(played / "results")
    try:
        pairs = behind(store, find_entry(standing([store]), "cnn+none"))
        run, m = next((r, m) for r, m in pairs if m.attack == "pgd")
        rebuilt = Rebuilt.of(run, [m], cache=played / "cache")
        model, defense, attack = rebuilt.refs(m)
        target, clean = rebuilt.clean(model, defense)
        assert np.array_equal(clean, m.clean_correct)
        attacked = np.flatnonzero(m.attacked_mask)
        for sample in attacked[[0, len(attacked) // 2, -1]]:  # the first, a middle and the last batch
            only = np.zeros_like(clean)
            only[sample] = True
            engine = replace(rebuilt.arena.engine, only=only)
            alone = engine.play(lambda: rebuilt.arena.attacker(rebuilt.data, model, defense, attack), target,
                                rebuilt.data, clean, m.attacked_mask.copy(), (model, defense, attack), [])
            assert alone.robust_correct[sample] == m.robust_correct[sample]
            assert alone.forward_passes < m.forward_passes  # only its batch was played
    finally:
        store.close()
