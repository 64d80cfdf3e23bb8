"""The robustbench model plugin: the real package loads a zoo architecture from a checkpoint in RobustBench's model
folder (written here from a random init: no network), the arena sees exactly RobustBench's logits, and every broken
setup (an HTML page or a truncated file for weights, an unknown name, a shadowed or overwritten package) is one line
and exit 2 before any work."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, run_cli, write_scenario

from arena.data import Data
from arena.matchups import Arena
from arena.scenario import load_scenario
from arena.training import WeightsCache
from arena_plugins.zoo import robustbench, zoo_entry

#: PreActResNet-18 with CIFAR-10 normalisation inside (11 M parameters): one of the zoo's smallest CIFAR-10 models.
MODEL = "Wong2020Fast"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """RobustBench's model folder holding a checkpoint of the zoo's own architecture, randomly initialised, saved as
    Carmon2019Unlabeled's is (``{"state_dict": ...}`` with DataParallel's ``module.`` prefix)."""
    torch.manual_seed(0)
    net = zoo_entry("cifar10", "Linf", MODEL)["model"]()
    for module in net.modules():  # BatchNorm statistics that are not the identity, as trained ones are not
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 2)
    folder = tmp_path_factory.mktemp("zoo") / "models"
    path = folder / "cifar10" / "Linf" / f"{MODEL}.pt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, path)
    return folder


def scenario(model: str = MODEL, **params) -> dict:
    return {
        "name": "zoo", "dataset": {"name": "cifar10", "samples": 16},
        "threat_model": {"norm": "linf", "eps": "8/255"},
        "models": [{"name": "robustbench", "model": model, **params}], "attacks": ["fgsm"], "batch_size": 16,
    }


def test_the_arena_sees_robustbench_s_own_logits_from_its_model_folder(model_dir, registry, tmp_path, monkeypatch):
    monkeypatch.chdir(model_dir.parent)  # RobustBench's default model_dir is ./models, and so is the arena's
    loaded = load_scenario(write_scenario(tmp_path, scenario()), registry)
    arena = Arena(loaded, registry, tmp_path / "results", cache=WeightsCache(tmp_path / "cache"), progress=False)
    run_id = arena.play()
    data = Data.load(loaded, registry)
    ours = arena.networks.defended(data, loaded.models[0], loaded.defenses[0])
    theirs = robustbench().load_model(MODEL, model_dir="models", dataset="cifar10", threat_model="Linf")
    with torch.no_grad():
        logits, expected = ours(data.images), theirs(data.images)
    assert torch.equal(logits, expected)
    assert logits.std(0).mean() > 1e-3, "the logits depend on the image (the weights were loaded, not zeros)"

    [matchup] = arena.store.matchups(run_id)
    assert matchup.status == "ok"
    assert matchup.clean_accuracy == pytest.approx((expected.argmax(1) == data.labels).float().mean().item())
    assert arena.store.run(run_id).weights["robustbench/none"]["source"] == "pretrained"
    checkpoint = model_dir / "cifar10" / "Linf" / f"{MODEL}.pt"
    _, fields = arena.networks.weights_key(data, loaded.models[0], loaded.defenses[0])
    assert fields["pretrained"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest(), "identity: the file's hash"
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir()), "never trained or cached"


@pytest.mark.parametrize("case, expected", [
    ("html", "is an HTML page"),
    ("truncated", "is truncated or damaged"),
    ("unknown", "unknown RobustBench model for cifar10 Linf 'Wong2020Fats'; did you mean 'Wong2020Fast'?"),
    ("missing", f"{MODEL}.pt not found"),
])
def test_a_broken_setup_is_one_line_and_exit_2_before_any_work(case, expected, model_dir, tmp_path, capsys):
    folder = tmp_path / "models"
    shutil.copytree(model_dir, folder)
    checkpoint = folder / "cifar10" / "Linf" / f"{MODEL}.pt"
    if case == "html":
        checkpoint.write_text("<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head>"
                              "<body>Google Drive can't scan this file for viruses.</body></html>")
    elif case == "truncated":
        checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    elif case == "missing":
        checkpoint.unlink()
    path = write_scenario(tmp_path, scenario("Wong2020Fats" if case == "unknown" else MODEL, model_dir=str(folder)))
    code, out, err = run_cli(capsys, "run", str(path), "--results", str(tmp_path / "r"), "-q")
    assert code == 2 and "Traceback" not in out + err and not (tmp_path / "r").exists()
    problems = [line for line in err.splitlines() if line.startswith("  ")]
    assert len(problems) == 1 and "models[0].model: " in problems[0] and expected in problems[0], err


def _site_with(tmp_path: Path, name: str) -> Path:
    """A folder holding a copy of the installed RobustBench package (``name``) to put first on ``sys.path``."""
    dist = importlib.metadata.distribution("robustbench")
    site = tmp_path / name
    shutil.copytree(Path(dist.locate_file("robustbench")), site / "robustbench",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return site


def test_a_shadowed_or_overwritten_robustbench_is_one_line_and_exit_2(model_dir, tmp_path):
    """Two ways the torchattacks wheel's old ``robustbench`` gets in: a copy earlier on the path, and its files
    written over RobustBench's (here: a copy of the package with its RECORD, one file changed)."""
    shadow = _site_with(tmp_path, "shadow")
    overwritten = _site_with(tmp_path, "overwritten")
    dist = importlib.metadata.distribution("robustbench")
    info = next(f.parts[0] for f in dist.files if f.parts[0].endswith(".dist-info"))
    shutil.copytree(Path(dist.locate_file(info)), overwritten / info)  # its RECORD: the files' hashes
    (overwritten / "robustbench" / "utils.py").write_text("# an older robustbench/utils.py\n")
    path = write_scenario(tmp_path, scenario(model_dir=str(model_dir)))
    env = {**os.environ, "ARENA_DATA_DIR": os.environ.get("ARENA_DATA_DIR", "")}
    runs = {site.name: subprocess.Popen(
        [sys.executable, "-m", "arena", "validate", str(path)], cwd=REPO, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**env, "PYTHONPATH": str(site)})
        for site in (shadow, overwritten)}
    expected = {"shadow": [f"finds {shadow / 'robustbench'}, an old copy"],
                "overwritten": ["were overwritten", "--force-reinstall robustbench=="]}
    for name, process in runs.items():
        out, err = process.communicate(timeout=300)
        problems = [line for line in err.splitlines() if line.startswith("  ")]
        assert process.returncode == 2 and "Traceback" not in out + err, err
        assert len(problems) == 1 and "models[0].name: " in problems[0], err
        assert all(part in problems[0] for part in expected[name]), err


def test_load_model_hands_evaluate_the_same_module_and_the_same_one_line_errors(model_dir, scenario_data_dir):
    import arena
    from arena_plugins.cifar10 import CIFAR10

    model = arena.load_model({"name": "robustbench", "model": MODEL, "model_dir": str(model_dir)})
    theirs = robustbench().load_model(MODEL, model_dir=str(model_dir), dataset="cifar10", threat_model="Linf")
    images, labels = CIFAR10(download=False).load("test", scenario_data_dir)
    images, labels = images[:8], labels[:8]
    with torch.no_grad():
        expected = theirs(images)
        assert torch.equal(model(images), expected)
    result = arena.evaluate(model, images, labels, ["fgsm"], arena.ThreatModel("linf", 8 / 255))
    assert result.clean_accuracy == pytest.approx((expected.argmax(1) == labels).float().mean().item())
    with pytest.raises(arena.ArenaError, match=r"model\.model: unknown RobustBench model .*'Wong2020Fast'\?"):
        arena.load_model({"name": "robustbench", "model": "Wong2020Fats", "model_dir": str(model_dir)})


def test_the_documented_yaml_validates_with_the_checkpoint_in_robustbench_s_folder(tmp_path, capsys, monkeypatch):
    page = (REPO / "docs" / "models-and-data.md").read_text(encoding="utf-8")
    text = page[page.index("## RobustBench's zoo"):].split("```yaml\n")[1].split("```")[0]
    name = "Carmon2019Unlabeled"
    assert f"model: {name}" in text and len(text.strip().splitlines()) == 4, "a name and three lines"
    checkpoint = tmp_path / "models" / "cifar10" / "Linf" / f"{name}.pt"
    checkpoint.parent.mkdir(parents=True)
    torch.save({"state_dict": zoo_entry("cifar10", "Linf", name)["model"]().state_dict()}, checkpoint)
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, "validate", str(write_scenario(tmp_path, text)))
    assert code == 0 and ": valid;" in out, err
