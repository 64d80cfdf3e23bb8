"""Adversarial examples from outside: a file made by the original AutoAttack (pyautoattack's APGD-CE) on an entry's
images lowers the entry where it breaks samples the arena's weak attack did not; bad files are each refused with one
line and store nothing; the arena's own export re-submitted gives identical per-sample results."""

from __future__ import annotations

import pickle
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import play, run_cli
from pyautoattack.autopgd_base import APGDAttack
from safetensors.numpy import save_file
from test_verify import SCENARIO

from arena.standing import standing
from arena.store import Store
from arena.verify import Rebuilt, behind, find_entry

#: The entry attacked only by random noise: a weak attack that leaves samples APGD breaks.
WEAK = {**SCENARIO, "name": "weak", "attacks": ["noise"]}


@pytest.fixture(scope="module")
def weak(tmp_path_factory, registry) -> dict:
    """The weak run, and the entry's clean images, labels, defended model and robust samples as the run left them."""
    root = tmp_path_factory.mktemp("external")
    play(root, registry, WEAK, cache=root / "cache")[0].close()
    store = Store.open_existing(root / "results")
    try:
        (run, m), = behind(store, find_entry(standing([store]), "cnn+none"))
        rebuilt = Rebuilt.of(run, [m], cache=root / "cache")
        target, clean = rebuilt.clean(*rebuilt.refs(m)[:2])
        images, labels = rebuilt.data.on(torch.device("cpu"))
    finally:
        store.close()
    return {"root": root, "target": target, "images": images, "labels": labels, "robust": m.robust_correct,
            "clean": clean, "eps": WEAK["threat_model"]["eps"]}


def fresh(weak: dict, tmp_path: Path) -> Path:
    shutil.copytree(weak["root"] / "results", tmp_path / "results")
    return tmp_path / "results"


def submit(capsys, weak: dict, results: Path, file: Path, name: str = "apgd") -> tuple[int, str, str]:
    return run_cli(capsys, "submit-examples", str(file), "--entry", "cnn+none", "--name", name, "--results",
                   str(results), "--cache-dir", str(weak["root"] / "cache"))


def entry(results: Path) -> dict:
    store = Store.open_existing(results)
    try:
        found = find_entry(standing([store]), "cnn+none")
        return {"worst": found.worst_case, "external": found.external, "pairs": behind(store, found)}
    finally:
        store.close()


@pytest.fixture(scope="module")
def apgd(weak, tmp_path_factory) -> Path:
    """APGD-CE of the original AutoAttack code on the entry's initially-correct images, saved as .npz."""
    samples = np.flatnonzero(weak["clean"])
    attack = APGDAttack(weak["target"], n_iter=20, norm="Linf", eps=weak["eps"], seed=0, device="cpu")
    adversarial = attack.perturb(weak["images"][samples], weak["labels"][samples]).detach()
    path = tmp_path_factory.mktemp("files") / "apgd.npz"
    np.savez(path, adversarial=adversarial.numpy(), sample=samples)
    return path


def test_autoattack_examples_lower_the_entry(weak, apgd, tmp_path, capsys):
    results = fresh(weak, tmp_path)
    before = entry(results)["worst"]
    code, out, err = submit(capsys, weak, results, apgd)
    assert code == 0, err
    assert "external:apgd vs cnn+none:" in out
    after = entry(results)
    external = next(m for _, m in after["pairs"] if m.attack == "external:apgd")
    beyond = weak["robust"] & ~external.robust_correct  # broken by the file, not by the arena's noise
    assert beyond.any()
    assert after["worst"] == pytest.approx(float((weak["robust"] & external.robust_correct).mean()))
    assert after["worst"] < before and after["external"] == ["external:apgd"]
    assert external.params["attack"]["sha256"] and external.gradient["external"]
    code, out, err = run_cli(capsys, "verify", "cnn+none", "--results", str(results), "--cache-dir",
                             str(weak["root"] / "cache"), "--samples", "60")
    assert code == 0, err  # the kept external images are audited and classified again
    assert "verified (60/60" in out


def _rows(results: Path) -> tuple[int, int]:
    db = sqlite3.connect(results / "arena.db")
    try:
        return tuple(db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("runs", "matchups"))
    finally:
        db.close()


def _bad(apgd: Path, folder: Path, kind: str) -> Path:
    """A copy of the APGD file with one defect."""
    with np.load(apgd) as data:
        adversarial, samples = data["adversarial"].copy(), data["sample"].copy()
    path = folder / f"{kind}.npz"
    if kind == "outside":
        adversarial[1] = np.clip(adversarial[1] + 0.1, 0, 1)
    elif kind == "nan":
        adversarial[0, 0, 0, 0] = np.nan
    elif kind == "shape":
        adversarial = adversarial[:, :, :16, :16]
    elif kind == "order":
        samples = samples[::-1].copy()
    elif kind == "pickle":
        np.savez(path, adversarial=np.array([adversarial], dtype=object), sample=samples)
        return path
    elif kind == "pt":
        path = folder / "pickled.pt"
        path.write_bytes(pickle.dumps({"adversarial": adversarial, "sample": samples}, protocol=2))
        return path
    np.savez(path, adversarial=adversarial, sample=samples)
    return path


@pytest.mark.parametrize(("kind", "expected"), [
    ("outside", "image 1 (sample {s1}) is 0.1"),
    ("nan", "image 0 (sample {s0}) has non-finite values"),
    ("shape", "'adversarial' has shape"),
    ("order", "over ε = 0.02: each image must be within ε of the clean image its 'sample' index names"),
    ("pickle", "holds pickled objects, which the arena never loads"),
    ("pt", "holds pickled objects, which the arena never loads"),
])
def test_bad_files_are_refused_with_one_line(weak, apgd, tmp_path, capsys, kind, expected):
    results = fresh(weak, tmp_path)
    rows = _rows(results)
    samples = np.flatnonzero(weak["clean"])
    code, out, err = submit(capsys, weak, results, _bad(apgd, tmp_path, kind))
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert expected.format(s0=samples[0], s1=samples[1]) in err
    assert _rows(results) == rows  # nothing stored


def test_safetensors_and_robustbench_pt_are_read(weak, apgd, tmp_path, capsys):
    results = fresh(weak, tmp_path)
    with np.load(apgd) as data:
        adversarial, samples = data["adversarial"], data["sample"]
    save_file({"adversarial": adversarial, "sample": samples}, str(tmp_path / "apgd.safetensors"))
    code, _, err = submit(capsys, weak, results, tmp_path / "apgd.safetensors", "st")
    assert code == 0, err
    whole = weak["images"].clone()  # RobustBench's format: every test image, in order, as one tensor
    whole[torch.from_numpy(samples)] = torch.from_numpy(adversarial)
    torch.save(whole, tmp_path / "apgd.pt")
    code, _, err = submit(capsys, weak, results, tmp_path / "apgd.pt", "rb")
    assert code == 0, err
    robust = {m.attack: m.robust_correct for _, m in entry(results)["pairs"]}
    assert np.array_equal(robust["external:st"], robust["external:rb"])


def test_exported_examples_resubmitted_give_identical_results(weak, apgd, tmp_path, capsys):
    results = fresh(weak, tmp_path)
    assert submit(capsys, weak, results, apgd)[0] == 0
    before = entry(results)
    code, out, err = run_cli(capsys, "examples", "--results", str(results), "--entry", "cnn+none", "--all",
                             "--format", "npz", "--out", str(tmp_path / "out"))
    assert code == 0, err
    exported = tmp_path / "out" / "cnn+none.npz"
    code, _, err = submit(capsys, weak, results, exported, "roundtrip")
    assert code == 0, err
    after = entry(results)
    clean = before["pairs"][0][1].clean_correct
    worst = np.logical_and.reduce([m.robust_correct for _, m in before["pairs"]])
    roundtrip = next(m for _, m in after["pairs"] if m.attack == "external:roundtrip")
    assert np.array_equal(roundtrip.robust_correct, worst) and np.array_equal(roundtrip.clean_correct, clean)
    assert after["worst"] == before["worst"]
