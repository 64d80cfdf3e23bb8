"""End to end on a small slice of the real CIFAR-10: records, summary, leaderboard, weights cache, determinism."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import REPO, play, run_cli, tiny, write_scenario

from arena.keys import seeded_as
from arena.leaderboard import rows
from arena.matchups import Arena
from arena.scenario import load_scenario
from arena.store import Store
from arena.training import WeightsCache

BOTH = [{"name": "cnn", "train": {"epochs": 1}}, {"name": "cnn_lstm", "train": {"epochs": 1}}]



@pytest.fixture(scope="module")
def first(tmp_path_factory, registry):
    folder = tmp_path_factory.mktemp("first")
    store, run_id = play(folder, registry, tiny(models=BOTH), folder / "cache")
    return folder, store, run_id


def test_every_matchup_is_recorded_with_its_numbers(first):
    _, store, run_id = first
    matchups = store.matchups(run_id)
    assert store.run(run_id).status == "complete"
    assert [(m.model, m.attack) for m in matchups] == [
        ("cnn", "fgsm"), ("cnn", "pgd"), ("cnn_lstm", "fgsm"), ("cnn_lstm", "pgd")
    ]
    for m in matchups:
        assert m.status == "ok" and m.defense == "none" and m.samples == 200 and m.wall_time_s > 0 and m.key
        assert len(m.clean_correct) == len(m.robust_correct) == 200
        assert not (m.robust_correct & ~m.clean_correct).any(), "robust implies correct when clean"
        assert m.clean_accuracy == pytest.approx(m.clean_correct.mean())
        assert 0.15 < m.clean_accuracy < 0.8  # chance is 0.1
        assert m.robust_accuracy == pytest.approx(m.robust_correct.mean()) and m.robust_accuracy < m.clean_accuracy
        broken = (m.clean_correct & ~m.robust_correct).sum() / m.clean_correct.sum()
        assert m.attack_success_rate == pytest.approx(broken)
        assert 0 < m.mean_norm <= m.max_norm <= 0.1 + 1e-6
        assert m.params["attack"]["plugin"] == m.attack and m.params["model"]["train"]["epochs"] == 1
    pgd = matchups[1].params["attack"]
    assert pgd == {"plugin": "pgd", "steps": 3, "step_size": None, "random_start": True, "bpda": True,
                   "eot_samples": 10}


def test_summary_json_and_leaderboard(first, capsys):
    folder, store, run_id = first
    code, out, _ = run_cli(capsys, "leaderboard", "--results", str(folder / "results"))
    assert code == 0 and run_id in out and "worst case" in out
    table = rows(store.matchups(run_id))
    for row in table:
        assert row.worst_case <= min(row.attacks.values())
        assert f"{100 * row.worst_case:.1f}%" in out
    assert [r.worst_case for r in table] == sorted((r.worst_case for r in table), reverse=True)


def test_second_run_retrains_nothing_and_changed_settings_retrain(first, registry, tmp_path):
    folder, store, run_id = first
    assert {w["source"] for w in store.run(run_id).weights.values()} == {"trained"}
    store2, run2 = play(tmp_path, registry, tiny(models=BOTH), folder / "cache")
    assert {w["source"] for w in store2.run(run2).weights.values()} == {"cache"}
    for a, b in zip(store.matchups(run_id), store2.matchups(run2)):
        assert np.array_equal(a.robust_correct, b.robust_correct)
    changed = [{"name": "cnn", "train": {"epochs": 1, "lr": 0.002}}]
    store3, run3 = play(tmp_path, registry, tiny(models=changed, attacks=["fgsm"]), folder / "cache")
    assert store3.run(run3).weights["cnn/none"]["source"] == "trained"
    assert len(list((folder / "cache").glob("*.pt"))) == 3


def test_same_scenario_and_seed_give_the_same_numbers(first, registry, tmp_path):
    folder, store, run_id = first
    fresh = tmp_path / "fresh-cache"  # retrain from scratch: weights and every number must match
    store2, run2 = play(tmp_path, registry, tiny(models=BOTH), fresh)
    key = store.run(run_id).weights["cnn_lstm/none"]["key"]
    a = torch.load(folder / "cache" / f"{key}.pt", weights_only=True)
    b = torch.load(fresh / f"{key}.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    for x, y in zip(store.matchups(run_id), store2.matchups(run2)):
        assert np.array_equal(x.clean_correct, y.clean_correct) and np.array_equal(x.robust_correct, y.robust_correct)
        assert (x.robust_accuracy, x.mean_norm, x.max_norm) == (y.robust_accuracy, y.mean_norm, y.max_norm)


def test_another_seed_gives_other_weights(first, registry, tmp_path):
    _, store, run_id = first
    store2, run2 = play(tmp_path, registry, tiny(models=BOTH[:1], attacks=["fgsm"], seed=1), tmp_path / "cache")
    assert store2.run(run2).weights["cnn/none"]["key"] != store.run(run_id).weights["cnn/none"]["key"]
    assert not np.array_equal(store2.matchups(run2)[0].clean_correct, store.matchups(run_id)[0].clean_correct)


def test_cli_run_writes_store_summary_and_table(tmp_path, capsys, isolated_cache):
    path = write_scenario(tmp_path, tiny(attacks=["fgsm"], threat_model={"norm": "l2", "eps": "8/255"}))
    code, out, _ = run_cli(capsys, "run", str(path), "--results", str(tmp_path / "res"), "--quiet", "--device", "cpu")
    assert code == 0 and "l2 ε=8/255" in out and "cnn" in out
    summary = json.loads(next((tmp_path / "res" / "runs").glob("*.json")).read_text())
    (matchup,) = summary["matchups"]
    assert matchup["status"] == "ok" and matchup["max_norm"] <= 8 / 255 + 1e-6
    assert summary["leaderboard"][0]["worst_case"] == matchup["robust_accuracy"]
    assert list(isolated_cache.glob("*.pt")) and list(isolated_cache.glob("*.json"))


def test_attacks_see_the_model_in_eval_mode(tmp_path, capsys):
    from arena_test_plugins import ModeProbe

    ModeProbe.seen_training.clear()
    path = write_scenario(tmp_path, tiny(attacks=["mode_probe"]))
    code, _, _ = run_cli(capsys, "run", str(path), "--results", str(tmp_path / "r"), "-p", "arena_test_plugins", "-q")
    assert code == 0 and ModeProbe.seen_training and not any(ModeProbe.seen_training)


def test_a_crashing_or_misshapen_plugin_fails_only_its_matchup(tmp_path, capsys):
    path = write_scenario(tmp_path, tiny(attacks=["explode", "fgsm", "wrong_shape"]))
    code, out, err = run_cli(capsys, "run", str(path), "--results", str(tmp_path / "r"), "-p", "arena_test_plugins",
                             "-q")
    assert code == 1, "a failed matchup makes the run exit non-zero, after the others completed"
    store = Store(tmp_path / "r")
    explode, fgsm, wrong = store.matchups(store.run().id)
    assert explode.status == "error" and "RuntimeError: boom from a plugin" in explode.detail
    assert "Traceback" in explode.detail
    assert fgsm.status == "ok" and fgsm.robust_accuracy is not None
    assert wrong.status == "error" and "attack 'wrong_shape' returned (" in wrong.detail
    assert "ERROR: explode vs cnn+none" in err and store.run().status == "complete"


def test_python_dash_m_arena(tmp_path):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "arena", "validate", str(REPO / "scenarios/quickstart.yaml")],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0 and "valid; 12 matchups under 3 runs" in done.stdout


def test_a_rerun_into_the_same_store_reuses_finished_matchups_and_fresh_replays_them(tmp_path, registry):
    scenario = tiny(attacks=["fgsm", {"name": "pgd", "steps": 2}])
    store, first_run = play(tmp_path, registry, scenario, tmp_path / "cache")
    store, second_run = play(tmp_path, registry, scenario, tmp_path / "cache")
    assert store.run(second_run).weights["cnn/none"]["source"] == "unused", "nothing to attack, no model loaded"
    for a, b in zip(store.matchups(first_run), store.matchups(second_run)):
        assert a.reused_from is None and b.reused_from == first_run and a.key == b.key
        assert np.array_equal(a.robust_correct, b.robust_correct) and a.robust_accuracy == b.robust_accuracy
    arena = Arena(load_scenario(write_scenario(tmp_path, scenario), registry), registry, tmp_path / "results",
                  cache=WeightsCache(tmp_path / "cache"), progress=False, fresh=True)
    third = arena.play()
    assert all(m.reused_from is None for m in arena.store.matchups(third))
    assert arena.store.run(third).weights["cnn/none"]["source"] == "cache"


def test_entries_alike_but_for_a_label_draw_apart_and_each_reuses_only_its_own_result(tmp_path, registry):
    """A label seeds an entry's random draws, so it enters the matchup key (plain names stay out: older keys hold);
    a second run reuses each entry's own result, named as this run names it."""
    relabelled = {"name": "pgd", "steps": 2, "label": "pgd_b"}
    scenario = tiny(attacks=[{"name": "pgd", "steps": 2}, relabelled],
                    defenses=["none", {"name": "art.jpeg", "quality": 50, "label": "jpeg_50"}])
    store, first_run = play(tmp_path, registry, scenario, tmp_path / "cache")
    store, second_run = play(tmp_path, registry, scenario, tmp_path / "cache")
    first, second = store.matchups(first_run), store.matchups(second_run)
    assert len({m.key for m in first}) == 4, "every entry computes its own draws"
    assert all(a.reused_from is None for a in first)
    for a, b in zip(first, second):
        assert (b.reused_from, b.key, b.model, b.defense, b.attack) == (first_run, a.key, a.model, a.defense, a.attack)
    plain = load_scenario(write_scenario(tmp_path, tiny()), registry)
    assert seeded_as(registry, (plain.models[0], plain.defenses[0], plain.attacks[0])) is None
    named = load_scenario(write_scenario(tmp_path, scenario), registry)
    assert seeded_as(registry, (named.models[0], named.defenses[1], named.attacks[1])) == ["cnn", "jpeg_50", "pgd_b"]


def test_crashed_matchups_are_retried_and_changed_plugin_code_is_not_reused(tmp_path, registry, monkeypatch):
    module = tmp_path / "my_attacks.py"
    module.write_text((REPO / "tests" / "arena_test_plugins.py").read_text())
    monkeypatch.syspath_prepend(str(tmp_path))
    from arena.registry import load_registry

    mine = load_registry(modules=["my_attacks"])
    scenario = tiny(attacks=["fgsm", "explode", "mode_probe"])
    store, first_run = play(tmp_path, mine, scenario, tmp_path / "cache")
    module.write_text(module.read_text() + "\n# edited\n")
    store, second_run = play(tmp_path, load_registry(modules=["my_attacks"]), scenario, tmp_path / "cache")
    fgsm, explode, probe = store.matchups(second_run)
    assert fgsm.reused_from == first_run, "fgsm's code did not change"
    assert explode.status == "error" and explode.reused_from is None, "a crash is retried, never reused"
    assert probe.reused_from is None, "the plugin's file changed, so its result is recomputed"


def test_kept_examples_export_bit_exact_pass_the_audit_and_fool_their_model(tmp_path, registry, capsys,
                                                                           scenario_data_dir):
    from arena.audit import audit
    from arena.threat import ThreatModel
    from arena_plugins.cifar10 import CIFAR10
    from arena_plugins.models import CNN

    scenario = tiny(attacks=[{"name": "pgd", "steps": 3}], save_examples="all")
    store, run_id = play(tmp_path, registry, scenario)
    (pgd,) = store.matchups(run_id)
    broken = int((pgd.clean_correct & ~pgd.robust_correct).sum())
    weights = store.run(run_id).weights["cnn/none"]["key"]
    store.close()
    code, out, err = run_cli(capsys, "examples", "--results", str(tmp_path / "results"), "--out", str(tmp_path / "x"))
    assert code == 0, err
    with np.load(tmp_path / "x" / "cnn+none+pgd.npz", allow_pickle=False) as found:
        data = {k: found[k] for k in found.files}
    assert len(data["sample"]) == broken > 0 and f"({broken} examples)" in out, "all of them, as asked"
    threat = ThreatModel(str(data["norm"]), float(data["eps"]))
    clean, adversarial = torch.from_numpy(data["clean"]), torch.from_numpy(data["adversarial"])
    assert audit("pgd", clean, adversarial, threat).violation is None
    images, labels = CIFAR10().load("test", scenario_data_dir)
    assert torch.equal(clean, images[data["sample"]]), "the clean images are the data set's, bit for bit"
    assert np.array_equal(data["label"], labels[data["sample"]].numpy())
    net = CNN().build(10)
    net.load_state_dict(torch.load(tmp_path / "cache" / f"{weights}.pt", weights_only=True))
    with torch.no_grad():
        predicted = net.eval()(adversarial).argmax(1).numpy()
    assert (predicted != data["label"]).all() and np.array_equal(predicted, data["predicted_after"])

    code, out, err = run_cli(capsys, "examples", "--results", str(tmp_path / "results"), "--out", str(tmp_path / "x"),
                             "--format", "png", "--limit", "3")
    assert code == 0 and (tmp_path / "x" / "cnn+none+pgd.png").stat().st_size > 0 and "(3 examples)" in out
    code, _, err = run_cli(capsys, "examples", "--results", str(tmp_path / "results"), "--out", str(tmp_path / "x"),
                           "--attack", "fgsm")
    assert code == 2 and "unknown attack" in err and "pgd" in err


def test_the_default_keeps_a_few_examples_and_keys_stay_as_they_were(tmp_path, registry):
    store, run_id = play(tmp_path, registry, tiny(attacks=["fgsm"]))
    (fgsm,) = store.matchups(run_id)
    assert len(store.examples(fgsm)) == 6
    store.close()
    again, run_again = play(tmp_path, registry, tiny(attacks=["fgsm"], save_examples=2))
    (kept,) = again.matchups(run_again)
    assert kept.key != fgsm.key and kept.reused_from is None and len(again.examples(kept)) == 2


def test_examples_of_an_uncompressed_schema_4_store_read_back_without_migrating(tmp_path, registry):
    import sqlite3
    import zlib

    store, run_id = play(tmp_path, registry, tiny(attacks=["fgsm"]))
    (m,) = store.matchups(run_id)
    kept = store.examples(m)
    store.close()
    db = sqlite3.connect(tmp_path / "results" / "arena.db")
    for rowid, clean, adversarial in db.execute("SELECT rowid, clean, adversarial FROM examples").fetchall():
        db.execute("UPDATE examples SET clean = ?, adversarial = ? WHERE rowid = ?",
                   (zlib.decompress(clean), zlib.decompress(adversarial), rowid))
    db.execute("ALTER TABLE examples DROP COLUMN codec")
    db.execute("PRAGMA user_version = 4")
    db.commit()
    db.close()
    old = Store(tmp_path / "results", readonly=True)
    back = old.examples(old.matchups(run_id)[0])
    assert len(back) == len(kept) == 6
    assert all(np.array_equal(a.adversarial, b.adversarial) and np.array_equal(a.clean, b.clean)
               for a, b in zip(kept, back))
