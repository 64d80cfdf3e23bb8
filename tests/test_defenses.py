"""ART defenses on small slices of the real CIFAR-10: adapters, adaptive gradients (BPDA, EOT), transfer, caching."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
import torch
from conftest import play, tiny, write_scenario

from arena.defended import Defended
from arena.scenario import ScenarioError, TrainConfig, load_scenario
from arena.store import Store
from arena.tables import SCHEMA_VERSION
from arena.training import Trainer
from arena_plugins.cifar10 import CIFAR10
from arena_plugins.models import CNN

PREPROCESSORS = ["art.jpeg", "art.spatial_smoothing", "art.feature_squeezing", "art.total_var_min",
                 "art.gaussian_noise"]
POSTPROCESSORS = ["art.reverse_sigmoid", "art.high_confidence"]
TRAINERS = [
    {"name": "art.madry_pgd", "max_iter": 2},
    {"name": "art.fbf"},
    {"name": "art.trades", "max_iter": 2},
    {"name": "fgsm_augmentation", "mode": "static"},
    {"name": "fgsm_augmentation", "mode": "on_the_fly"},
]


@pytest.fixture(scope="module")
def slice_(scenario_data_dir):
    """256 real test images and their labels."""
    images, labels = CIFAR10().load("test", scenario_data_dir)
    return images[:256], labels[:256]


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return CNN().build(10).eval()


def stage(registry, name, **params):
    return registry.get("defense", name).cls(**params)


def input_gradient(module, images, labels):
    x = images.clone().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(module(x), labels)
    (grad,) = torch.autograd.grad(loss, x)
    return grad


@pytest.mark.parametrize("name", PREPROCESSORS)
def test_preprocessor_runs_and_passes_gradients(name, registry, net, slice_):
    images, labels = slice_[0][:16], slice_[1][:16]
    pre = stage(registry, name)
    out = pre(images)
    assert out.shape == images.shape and 0 <= out.min() and out.max() <= 1
    defended = Defended(net, pre=[pre], eot_samples=2)
    with torch.no_grad():
        assert defended(images).dtype == torch.float32, "the defended module keeps the input's dtype"
    assert input_gradient(defended, images, labels).abs().sum() > 0, f"{name}: no gradient reaches the input"
    if not pre.differentiable:
        masked = Defended(net, pre=[pre], bpda=False)
        assert input_gradient(masked, images, labels).abs().sum() == 0, "without BPDA the naive attack gets nothing"
        assert defended.gradient()["bpda"] == [name] and masked.gradient()["masked"] == [name]


def test_jpeg_really_compresses(registry, slice_):
    images = slice_[0][:16]
    assert (stage(registry, "art.jpeg", quality=10)(images) - images).abs().mean() > 0.01


@pytest.mark.parametrize("name", POSTPROCESSORS)
def test_postprocessor_runs_and_is_crossed_with_bpda(name, registry, net, slice_):
    images, labels = slice_[0][:16], slice_[1][:16]
    post = stage(registry, name)
    defended = Defended(net, post=[post])
    with torch.no_grad():
        probabilities = defended(images).exp()
    assert probabilities.shape == (16, 10) and not torch.allclose(probabilities, net(images).softmax(1))
    assert input_gradient(defended, images, labels).abs().sum() > 0
    assert defended.gradient()["bpda"] == [name]


def test_randomized_defense_is_attacked_with_eot(registry, net, slice_):
    images = slice_[0][:8]
    calls = []
    hook = net.register_forward_hook(lambda *_: calls.append(1))
    try:
        defended = Defended(net, pre=[stage(registry, "art.gaussian_noise")], eot_samples=5)
        with torch.no_grad():
            defended(images)
        assert len(calls) == 1, "a prediction is one draw, as the deployed defense makes it"
        defended(images.requires_grad_(True)).sum().backward()
        assert len(calls) == 1 + 5, "an attacker's forward pass averages over eot_samples draws"
    finally:
        hook.remove()
    assert defended.gradient() == {"bpda": ["art.gaussian_noise"], "masked": [], "randomized": ["art.gaussian_noise"],
                                   "eot_samples": 5}


@pytest.mark.parametrize("entry", TRAINERS, ids=lambda e: f"{e['name']}-{e.get('mode', '')}")
def test_trainer_changes_the_weights(entry, registry, scenario_data_dir):
    images, labels = CIFAR10().load("train", scenario_data_dir)
    images, labels = images[:256], labels[:256]

    torch.manual_seed(0)
    model, baseline = CNN().build(10), CNN().build(10).eval()
    before = [p.detach().clone() for p in model.parameters()]
    trainer = Trainer(TrainConfig(epochs=1), 0, torch.device("cpu"), 10, progress=False, baseline=lambda: baseline)
    defense = stage(registry, entry["name"], **{k: v for k, v in entry.items() if k != "name"})
    defense.train(model, images, labels, trainer)
    assert not model.training
    changed = any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert changed, "training left the weights as they were"



@pytest.fixture(scope="module")
def defended_run(tmp_path_factory, registry):
    """One tiny run: a training-time defense, a composition, a preprocessor, a randomized one and a transfer attack."""
    folder = tmp_path_factory.mktemp("defended")
    scenario = tiny(
        defenses=["none", {"name": "art.madry_pgd", "max_iter": 2, "label": "pgd_at"},
                  {"label": "pgd_at+jpeg", "chain": [{"name": "art.madry_pgd", "max_iter": 2}, "art.jpeg"]},
                  "art.jpeg", {"name": "art.gaussian_noise", "sigma": 0.05}],
        attacks=["fgsm", {"name": "fgsm", "label": "fgsm_transfer", "source": {"defense": "none"}},
                 {"name": "fgsm", "label": "fgsm_no_eot", "eot_samples": 1}],
    )
    store, run_id = play(folder, registry, scenario)
    return folder, scenario, store, run_id


def by_name(store, run_id):
    return {(m.defense, m.attack): m for m in store.matchups(run_id)}


def test_every_matchup_records_its_gradient_path(defended_run):
    _, _, store, run_id = defended_run
    found = by_name(store, run_id)
    assert all(m.status == "ok" for m in found.values()), [m.detail for m in found.values() if m.status != "ok"]
    assert found["none", "fgsm"].gradient["bpda"] == [] and "source" not in found["none", "fgsm"].gradient
    assert found["art.jpeg", "fgsm"].gradient["bpda"] == ["art.jpeg"]
    assert found["pgd_at+jpeg", "fgsm"].gradient["bpda"] == ["art.jpeg"]
    assert found["art.gaussian_noise", "fgsm"].gradient["eot_samples"] == 10
    assert found["art.gaussian_noise", "fgsm_no_eot"].gradient["eot_samples"] == 1
    assert found["art.jpeg", "fgsm_transfer"].gradient["source"] == "cnn+none"


def test_transfer_uses_the_source_gradients(defended_run):
    _, _, store, run_id = defended_run
    found = by_name(store, run_id)
    # Crafted on cnn+none, the examples are the white-box ones for cnn+none ...
    assert np.array_equal(found["none", "fgsm_transfer"].robust_correct, found["none", "fgsm"].robust_correct)
    # ... and they transfer badly to the adversarially trained model, which white-box FGSM attacks better.
    assert found["pgd_at", "fgsm_transfer"].robust_accuracy > found["pgd_at", "fgsm"].robust_accuracy


def test_training_defense_weights_are_cached_and_reused(defended_run, registry):
    folder, scenario, store, run_id = defended_run
    weights = store.run(run_id).weights
    assert weights["cnn/pgd_at"]["source"] == "trained"
    assert weights["cnn/pgd_at+jpeg"]["key"] == weights["cnn/pgd_at"]["key"], "JPEG adds no training"
    assert weights["cnn/art.jpeg"]["key"] == weights["cnn/none"]["key"] != weights["cnn/pgd_at"]["key"]
    sidecar = json.loads((folder / "cache" / f"{weights['cnn/pgd_at']['key']}.json").read_text())
    assert sidecar["defense"][0] == "art.madry_pgd"
    (folder / "again").mkdir()
    # the weights key leaves out the attacks and the other pairs: one matchup is enough to show the cache is read
    again, second = play(folder / "again", registry, {**scenario, "defenses": scenario["defenses"][1:2],
                                                      "attacks": ["fgsm"]}, cache=folder / "cache")
    assert again.run(second).weights["cnn/pgd_at"]["source"] == "cache", "a new results store, cached weights"


def test_static_fgsm_augmentation_crafts_on_the_cached_baseline(tmp_path, registry):
    store, run_id = play(tmp_path, registry, tiny(defenses=[{"name": "fgsm_augmentation", "mode": "static"}],
                                                  attacks=["fgsm"]))
    keys = {p.stem for p in (tmp_path / "cache").glob("*.pt")}
    assert len(keys) == 2, "the baseline it crafts on is trained and cached as cnn + none"
    assert store.matchups(run_id)[0].status == "ok"


@pytest.mark.parametrize(
    ("defenses", "attacks", "expected"),
    [
        ([{"chain": ["art.madry_pgd", "art.fbf"]}], ["fgsm"], "defenses[0]: at most one training-time defense"),
        ([{"chain": ["none", {"name": "art.jpeg", "quality": 0}]}], ["fgsm"], "defenses[0].chain[1].quality"),
        (["none"], [{"name": "fgsm", "source": {"model": "cnn_lsm"}}], "did you mean 'cnn'"),
        (["none"], [{"name": "fgsm", "source": {"defense": "art.jpg"}}], "unknown defense 'art.jpg'"),
    ],
)
def test_bad_defense_entries_are_refused(defenses, attacks, expected, tmp_path, registry):
    path = write_scenario(tmp_path, tiny(defenses=defenses, attacks=attacks))
    with pytest.raises(ScenarioError) as error:
        load_scenario(path, registry)
    assert expected in str(error.value)


@pytest.mark.parametrize("version", [1, 2, 3, 4, 5, 6, 7, 8])
def test_an_older_store_is_migrated_in_place(tmp_path, version):
    Store(tmp_path).close()
    db = sqlite3.connect(tmp_path / "arena.db")
    added = {1: [("matchups", "gradient")],
             2: [("matchups", c) for c in ("attacked", "forward_passes", "backward_passes", "checks", "suite",
                                           "cascade_after")],
             3: [("runs", c) for c in ("classes", "expected", "pid", "host")],
             4: [("examples", "codec")],
             5: [("runs", c) for c in ("data_fingerprint", "runtime", "origin")],
             6: [], 7: [], 8: [("matchups", "attack_time_s")]}  # 7 rebuilt matchups (tests/test_suite.py)
    dropped = [column for step in range(version, SCHEMA_VERSION) for column in added[step]]
    if version < 4:
        db.execute("DROP TABLE examples")  # added in schema 4
        dropped = [(table, column) for table, column in dropped if table != "examples"]
    for table, column in dropped:
        db.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    db.execute("DROP TABLE verifications")  # added in schema 8
    db.execute(f"PRAGMA user_version = {version}")
    db.commit()
    db.close()
    store = Store(tmp_path)
    for table, column in dropped:
        assert column in [row[1] for row in store.db.execute(f"PRAGMA table_info({table})")]
    assert store.db.execute("SELECT count(*) FROM examples").fetchone()[0] == 0
    assert store.verifications() == []
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
