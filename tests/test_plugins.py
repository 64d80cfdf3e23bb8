"""Third-party plugins: the example package found through its entry point, explicit loading, isolation, reporters."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import REPO, run_cli, tiny, write_scenario

from arena.registry import AUTOLOAD_ENV, load_registry
from arena.scenario import ScenarioError, load_scenario
from arena.store import Store
from arena.version import DISTRIBUTION

EXAMPLE = REPO / "examples" / "arena-extras"


@pytest.fixture(scope="module")
def example_site(tmp_path_factory) -> Path:
    """The example package installed by pip, built from its own ``pyproject.toml``, into a folder of its own. Its one
    dependency is the arena under test, so pip is told not to resolve it (nor to reach any index)."""
    source, site = tmp_path_factory.mktemp("src") / "arena-extras", tmp_path_factory.mktemp("site")
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))  # the checkout stays clean
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                           "--no-build-isolation", "--target", str(site), str(source)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    return site


@pytest.fixture
def installed_example(example_site, monkeypatch) -> Path:
    """The pip-installed example on the path, as a user's environment has it."""
    monkeypatch.syspath_prepend(str(example_site))
    return example_site


def test_pip_installs_the_example_beside_the_arena_and_every_command_still_works(example_site, tmp_path):
    [dist_info] = example_site.glob("arena_extras-*.dist-info")
    assert importlib.metadata.Distribution.at(dist_info).requires == [DISTRIBUTION], "never the other `arena`"
    assert sorted(p.name for p in example_site.iterdir() if not p.name.endswith(".dist-info")) == ["arena_extras"]
    env = {**os.environ, "PYTHONPATH": str(example_site)}
    listed = subprocess.run([sys.executable, "-m", "arena", "plugins"], capture_output=True, text=True, env=env,
                            cwd=tmp_path, timeout=600)
    assert listed.returncode == 0 and "Traceback" not in listed.stderr, listed.stderr
    text = re.sub(r"\n {5,}", " ", listed.stdout)  # a long first sentence, wrapped, back on its line
    assert re.search(r"^  mifgsm +Momentum iterative FGSM .*\[arena-extras 0\.1\.0\]$", text, re.M)
    assert re.search(r"^  checkpoint +", text, re.M) and re.search(r"^  pgd +", text, re.M)


def test_plugins_p_finds_a_module_in_the_current_folder(tmp_path):
    (tmp_path / "my_plugins.py").write_text(textwrap.dedent('''
        """My plugins."""
        from arena import Attack, hookimpl

        class Nothing(Attack):
            """Returns the images unchanged, a floor for the real attacks."""
            name = "nothing"
            def __call__(self, images, labels):
                return images

        @hookimpl
        def arena_register_attacks(register):
            register(Nothing)
    '''))
    command = Path(sys.executable).with_name("arena")  # the console script, run from the plugin's own folder
    listed = subprocess.run([str(command), "plugins", "-p", "my_plugins"], capture_output=True, text=True,
                            cwd=tmp_path, timeout=600)
    assert listed.returncode == 0, listed.stderr
    assert re.search(r"^  nothing +Returns the images unchanged, a floor for the real attacks\. \[my_plugins\]$",
                     listed.stdout, re.M)
    missing = subprocess.run([str(command), "plugins", "-p", "no_plugins_here"], capture_output=True, text=True,
                             cwd=tmp_path, timeout=600)
    assert missing.returncode == 2 and "no_plugins_here" in missing.stderr and "Traceback" not in missing.stderr


def test_the_example_package_is_discovered_through_its_entry_point(installed_example, capsys):
    registry = load_registry()
    mifgsm, checkpoint = registry.get("attack", "mifgsm"), registry.get("model", "checkpoint")
    assert (mifgsm.package, mifgsm.version, mifgsm.provider) == ("arena-extras", "0.1.0", "extras")
    assert checkpoint.package == "arena-extras"
    code, out, _ = run_cli(capsys, "plugins", "--json")
    listed = {p["name"]: p for p in json.loads(out)["plugins"]}
    assert code == 0 and listed["mifgsm"]["package"] == "arena-extras"
    assert listed["mifgsm"]["params"] == {"steps": "int = 10, >= 1", "decay": "float = 1.0, >= 0"}
    assert listed["mifgsm"]["description"].startswith("Momentum iterative FGSM")
    assert listed["noise"]["package"] == DISTRIBUTION, "the built-in noise baseline"


def test_autoload_off_keeps_only_the_builtins(installed_example, monkeypatch):
    monkeypatch.setenv(AUTOLOAD_ENV, "1")
    registry = load_registry()
    assert "mifgsm" not in registry.names("attack") and "noise" in registry.names("attack")
    assert "mifgsm" in load_registry(modules=["arena_extras"]).names("attack"), "explicit loading still works"


def test_its_parameters_are_validated(installed_example, tmp_path):
    path = write_scenario(tmp_path, tiny(attacks=[{"name": "mifgsm", "steps": 0}],
                                         models=[{"name": "checkpoint", "arch": "resnet"}]))
    with pytest.raises(ScenarioError) as error:
        load_scenario(path, load_registry())
    message = str(error.value)
    assert "attacks[0].steps: Input should be greater than or equal to 1" in message
    assert "models[0].path: required field is missing" in message and "models[0].arch" in message


class _RunsCode:
    """A pickle payload: unpickling it would run ``touch``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_would_run_code_is_refused_in_one_line_before_any_work(installed_example, tmp_path,
                                                                                  capsys):
    evil, marker = tmp_path / "evil.pt", tmp_path / "ran"
    torch.save({"weight": _RunsCode(marker)}, evil)
    scenario = write_scenario(tmp_path, tiny(models=[{"name": "checkpoint", "path": "evil.pt"}]))
    code, out, err = run_cli(capsys, "run", str(scenario), "--results", str(tmp_path / "r"), "-q")
    assert code == 2 and "Traceback" not in out + err and not marker.exists() and not (tmp_path / "r").exists()
    assert re.search(r"models\[0\]\.path: .*evil\.pt is refused: not a plain state_dict .*torch\.save\(model\."
                     r"state_dict\(\), path\)", err), err


def test_it_runs_in_a_scenario_with_a_checkpoint_trained_elsewhere(installed_example, tmp_path, capsys):
    torch.manual_seed(0)
    from arena_plugins.models import CNN

    first = write_scenario(tmp_path, tiny(attacks=["fgsm"]), "train.yaml")
    assert run_cli(capsys, "run", str(first), "--results", str(tmp_path / "r"), "-q")[0] == 0
    trained = Store(tmp_path / "r").run().weights["cnn/none"]["key"]
    checkpoint = tmp_path / "elsewhere.pt"
    net = CNN().build(10)
    net.load_state_dict(torch.load(tmp_path / "cache" / f"{trained}.pt", weights_only=True))
    torch.save(net.state_dict(), checkpoint)

    models = [{"name": "checkpoint", "path": str(checkpoint), "train": {"epochs": 0}}]
    scenario = write_scenario(tmp_path, tiny(models=models, attacks=["fgsm", {"name": "mifgsm", "steps": 5}]))
    code, out, err = run_cli(capsys, "run", str(scenario), "--results", str(tmp_path / "r"), "-q")
    assert code == 0, err
    store = Store(tmp_path / "r")
    run = store.run()
    fgsm, mifgsm = store.matchups(run.id)
    assert run.weights["checkpoint/none"]["source"] == "pretrained"
    earlier = [r for r in store.db.execute("SELECT clean_accuracy FROM matchups WHERE model = 'cnn'")]
    assert fgsm.clean_accuracy == pytest.approx(earlier[0][0]), "the checkpoint's weights are the ones trained before"
    assert mifgsm.status == "ok" and mifgsm.robust_accuracy <= fgsm.robust_accuracy, "iterative beats one step"
    assert mifgsm.backward_passes == 5 * int(round(mifgsm.clean_accuracy * mifgsm.samples)), "5 steps per sample"


def test_a_plugin_that_fails_to_import_is_reported_once_and_the_rest_load(installed_example, tmp_path, monkeypatch,
                                                                          capsys):
    for site in (tmp_path / "broken", tmp_path / "stale"):  # found twice on the path, as a stale egg-info can be
        broken = site / "arena_broken-1.0.dist-info"
        broken.mkdir(parents=True)
        (broken / "METADATA").write_text("Metadata-Version: 2.1\nName: arena-broken\nVersion: 1.0\n")
        (broken / "entry_points.txt").write_text("[arena]\nbroken = arena_broken_missing_module\n")
        monkeypatch.syspath_prepend(str(site))
    registry = load_registry()
    assert sum("broken = arena_broken_missing_module (arena-broken)" in e and "ModuleNotFoundError" in e
               for e in registry.load_errors) == 1, registry.load_errors
    assert "mifgsm" in registry.names("attack") and "fgsm" in registry.names("attack")
    code, out, _ = run_cli(capsys, "plugins", "--json")
    assert code == 0 and json.loads(out)["errors"] == registry.load_errors


def test_a_scenario_loads_its_own_plugin_file(tmp_path, capsys):
    (tmp_path / "my_attack.py").write_text(textwrap.dedent('''
        import torch
        from arena import Attack, hookimpl

        class Nothing(Attack):
            """Returns the images unchanged."""
            name = "nothing"

            def __call__(self, images, labels):
                return images.clone()

        @hookimpl
        def arena_register_attacks(register):
            register(Nothing)
    '''))
    path = write_scenario(tmp_path, tiny(attacks=["nothing"], plugins=["my_attack.py"]))
    code, out, err = run_cli(capsys, "run", str(path), "--results", str(tmp_path / "r"), "-q")
    assert code == 0, err
    matchup = Store(tmp_path / "r").matchups(Store(tmp_path / "r").run().id)[0]
    assert matchup.attack == "nothing" and matchup.robust_accuracy == matchup.clean_accuracy
    missing = write_scenario(tmp_path, tiny(plugins=["not_here.py"]), "missing.yaml")
    code, _, err = run_cli(capsys, "validate", str(missing))
    assert code == 2 and f"{missing}: plugins: 1 problem; nothing was loaded" in err and "no such file" in err
    assert "not_here.py" in err


class Recorder:
    """A reporter plugin (an object with hook methods) that records the events it receives, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def arena_run_started(self, run_id, run):
        self.events.append(("run_started", run.scenario))

    def arena_matchup_finished(self, matchup):
        self.events.append(("matchup_finished", matchup.attack))

    def arena_run_finished(self, status):
        self.events.append(("run_finished", status))


class Broken:
    def arena_matchup_finished(self, matchup):
        raise RuntimeError("the tracker is down")


def test_reporter_events_arrive_in_order_and_a_broken_reporter_stops_nothing(tmp_path, registry):
    from arena import hookimpl
    from arena.matchups import Arena
    from arena.training import WeightsCache

    recorder = Recorder()
    registry = load_registry()
    for plugin in (recorder, Broken()):
        for name in dir(plugin):
            if name.startswith("arena_"):
                hookimpl(getattr(type(plugin), name))
        registry.pm.register(plugin)
    scenario = load_scenario(write_scenario(tmp_path, tiny(attacks=["fgsm", {"name": "pgd", "steps": 1}])), registry)
    arena = Arena(scenario, registry, tmp_path / "r", cache=WeightsCache(tmp_path / "cache"), progress=False)
    run_id = arena.play()
    assert recorder.events == [("run_started", "tiny"), ("matchup_finished", "fgsm"), ("matchup_finished", "pgd"),
                               ("run_finished", "complete")]
    lines = [json.loads(line) for line in (tmp_path / "r" / "runs" / f"{run_id}.jsonl").read_text().splitlines()]
    assert [line["event"] for line in lines] == ["run_started", "matchup_finished", "matchup_finished", "run_finished"]
    assert lines[1]["matchup"]["attack"] == "fgsm" and lines[1]["matchup"]["robust_accuracy"] is not None
