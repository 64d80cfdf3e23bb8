"""The public face: one ``arena`` namespace for plugins and notebooks, an acyclic core, and the Python API."""

from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, play, run_cli, tiny, write_scenario

import arena
from arena.cli import main
from arena.registry import Registry, load_registry
from arena.scenario import load_scenario
from arena.store import Store
from arena_plugins.models import CNN

CORE = REPO / "arena"


def _imports(path: Path) -> list[str]:
    """Every module a file imports (``TYPE_CHECKING`` blocks included), as dotted names; ``from arena import x``
    counts as importing ``arena.x`` when x is a module of the package, else ``arena`` itself."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.append(sub if (CORE / f"{alias.name}.py").is_file() and node.module == "arena" else node.module)
    return found


def _code_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, flags=re.S)


def test_plugins_and_docs_import_only_the_public_namespace():
    sources = {str(p): p.read_text() for p in (REPO / "plugins").glob("*.py")}
    guide = (REPO / "docs" / "writing-plugins.md").read_text()
    sources |= {f"writing-plugins.md block {i}": code for i, code in enumerate(_code_blocks(guide))}
    for name, code in sources.items():
        for node in ast.walk(ast.parse(code)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            internal = [m for m in modules if m.startswith("arena.")]
            assert not internal, f"{name} imports {internal}; import from `arena` instead"


def test_the_core_import_graph_has_no_cycle():
    graph = {f"arena.{p.stem}" if p.stem != "__init__" else "arena":
             {m for m in _imports(p) if m == "arena" or m.startswith("arena.")} for p in CORE.glob("*.py")}
    assert "arena.hookspecs" in graph and "arena.store" not in graph["arena.hookspecs"]
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, "import cycle: " + " -> ".join([*path[path.index(module):], module])
        if module in done:
            return
        for other in graph.get(module, ()):
            visit(other, (*path, module))
        done.add(module)

    for module in graph:
        visit(module, ())


def test_every_user_error_is_an_arena_error():
    for error in (arena.ScenarioError, arena.PluginError, arena.DataError, arena.StoreError):
        assert issubclass(error, arena.ArenaError)
    for name in arena.__all__:
        assert hasattr(arena, name), name


def test_registry_builds_plugins_from_entries(registry: Registry):
    scenario_like = type("Ref", (), {"name": "cnn", "params": {"normalize": False}})()
    model = registry.build(arena.Model, scenario_like)
    assert isinstance(model, CNN) and model.normalize is False
    attack = registry.build(arena.Attack, "fgsm", torch.nn.Identity(), arena.ThreatModel("linf", 0.1))
    assert attack.threat.eps == 0.1
    chain = [type("Ref", (), {"name": n, "params": {}})() for n in ("art.madry_pgd", "art.jpeg")]
    assert [r.name for r in registry.training_stages(chain)] == ["art.madry_pgd"]


def test_readme_python_example_runs_verbatim(monkeypatch):
    readme = (REPO / "README.md").read_text()
    start = readme.index("## Evaluate your own model")
    section = readme[start:readme.index("\n## ", start)]
    [code] = _code_blocks(section)
    monkeypatch.chdir(REPO)
    exec(compile(code, "README.md (Python API)", "exec"), {})


@pytest.fixture(scope="module")
def data():
    scenario, registry = arena.open_scenario(REPO / "scenarios" / "quickstart.yaml")
    images, labels = registry.build(arena.Dataset, scenario.dataset).load("test", scenario.data_dir())
    torch.manual_seed(0)
    return CNN().build(10), images[:64], labels[:64]


def test_evaluate_audits_and_stores_where_the_leaderboard_reads(tmp_path, data, capsys):
    model, images, labels = data
    result = arena.evaluate(model, images, labels, attacks=["fgsm", {"name": "cheat", "factor": 3.0}],
                            threat=arena.ThreatModel("linf", 0.05), results=tmp_path / "r", name="untrained",
                            plugins=["arena_test_plugins"], batch_size=32)
    assert result.robust_accuracy["cheat"] is None and result.robust_correct["cheat"] is None
    [cheat] = [m for m in result.matchups if m.attack == "cheat"]
    assert cheat.status == "invalid" and "> ε" in cheat.detail, "a plugin outside ε fails its audit"
    assert result.worst_case_correct.tolist() == result.robust_correct["fgsm"].tolist()
    assert len(result.clean_correct) == 64 and result.run.threat == arena.ThreatModel("linf", 0.05)
    code, out, _ = run_cli(capsys, "leaderboard", "--results", str(tmp_path / "r"))
    assert code == 0 and "untrained" in out and result.run.id in out


def test_evaluate_refuses_bad_input(data):
    model, images, labels = data
    with pytest.raises(arena.ArenaError, match="one label each"):
        arena.evaluate(model, images, labels[:3], attacks=["fgsm"], threat=arena.ThreatModel("linf", 0.1))
    with pytest.raises(arena.ScenarioError, match="unknown attack 'fsgm'; did you mean 'fgsm'"):
        arena.evaluate(model, images, labels, attacks=["fsgm"], threat=arena.ThreatModel("linf", 0.1))


def test_open_scenario_names_the_file_when_a_declared_plugin_is_missing(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: s\nplugins: [missing.py]\nthreat_model: {norm: linf, eps: 0.1}\nmodels: [cnn]\n"
                    "attacks: [fgsm]\n")
    with pytest.raises(arena.ScenarioError, match=r"(?s)s\.yaml: plugins: 1 problem; .*no such file .*missing"):
        arena.open_scenario(path)
    assert main(["validate", str(path)]) == 2
    (tmp_path / "missing.py").write_text("raise ImportError('a broken plugin')\n")
    with pytest.raises(arena.PluginError, match=r"s\.yaml: plugins: cannot load plugin module .*a broken plugin"):
        arena.open_scenario(path)


MY_ATTACK = """
import torch
import torch.nn.functional as F

from arena import Attack, hookimpl


class MyFGSM(Attack):
    \"\"\"A scenario's own attack, loaded from a .py file beside it.\"\"\"

    name = "my_fgsm"

    def __call__(self, images, labels):
        x = images.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(self.model(x), labels), x)
        return (images + self.threat.eps * grad.sign()).clamp(0, 1).detach()


@hookimpl
def arena_register_attacks(register):
    register(MyFGSM)
"""


def test_the_report_reads_only_the_store(tmp_path, capsys, monkeypatch, scenario_data_dir):
    """A run whose scenario loads its own plugin file; then the data folder and the weights cache are deleted and
    no plugin is loadable: the report still draws the examples the run counted."""
    study, data, cache, results = (tmp_path / name for name in ("study", "data", "cache", "r"))
    study.mkdir()
    data.mkdir()
    shutil.copy(scenario_data_dir / "cifar10.npz", data / "cifar10.npz")
    (study / "my_attack.py").write_text(MY_ATTACK)
    scenario = tiny(attacks=["my_fgsm"], plugins=["my_attack.py"])
    scenario["dataset"]["data_dir"] = str(data)
    path = write_scenario(study, scenario)
    assert main(["run", str(path), "--results", str(results), "--cache-dir", str(cache), "-q", "--no-report"]) == 0
    shutil.rmtree(data)
    shutil.rmtree(cache)
    shutil.rmtree(study)
    monkeypatch.delenv("ARENA_DATA_DIR")
    code, out, err = run_cli(capsys, "report", "--results", str(results), "--out", str(tmp_path / "report"))
    assert code == 0, err
    assert (tmp_path / "report" / "examples.png").stat().st_size > 1000
    store = Store(results)
    run = store.run()
    [m] = store.matchups(run.id)
    examples = store.examples(m)
    assert len(examples) == 6 and run.classes[:2] == ["airplane", "automobile"]
    for e in examples:
        assert m.attacked_mask[e.sample] and not m.robust_correct[e.sample], "an example the run counted as broken"
        assert e.predicted_before == e.label != e.predicted_after
        assert np.abs(e.adversarial - e.clean).max() <= run.threat.eps + 1e-6 and e.clean.shape == (3, 32, 32)


class _Loaded(arena.Model):
    """A model whose weights file is a Path parameter and whose output width is a parameter."""

    name = "loaded"
    params = {"weights": arena.Param(Path, None, nullable=True), "width": arena.Param(int, 10),
              "kind": arena.Param(str, "a", choices=["a", "b"])}

    def build(self, num_classes: int) -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, self.width))


class _Provides:
    @arena.hookimpl
    def arena_register_models(self, register):
        register(_Loaded)


def test_params_take_any_sequence_of_choices_and_resolve_paths_against_the_scenario(tmp_path):
    registry = load_registry(modules=[_Provides()])
    missing = write_scenario(tmp_path, tiny(models=[{"name": "loaded", "weights": "w.pt"}]))
    with pytest.raises(arena.ScenarioError, match=r"models\[0\]\.weights: no such file .*w\.pt; give a path relative"):
        load_scenario(missing, registry)
    (tmp_path / "w.pt").write_bytes(b"")
    path = write_scenario(tmp_path, tiny(models=[{"name": "loaded", "weights": "w.pt", "kind": "b"}]))
    [ref] = load_scenario(path, registry).models
    assert ref.params == {"weights": str((tmp_path / "w.pt").resolve()), "width": 10, "kind": "b"}
    model = registry.build(arena.Model, ref)
    assert model.weights == (tmp_path / "w.pt").resolve() and model.kind == "b"
    with pytest.raises(arena.ScenarioError, match=r"models\[0\]\.kind: Input should be 'a' or 'b' \(got 'c'\)"):
        load_scenario(write_scenario(tmp_path, tiny(models=[{"name": "loaded", "kind": "c"}])), registry)


def test_a_model_with_the_wrong_number_of_logits_fails_with_a_clear_message(tmp_path):
    registry = load_registry(modules=[_Provides()])
    store, run_id = play(tmp_path, registry, tiny(models=[{"name": "loaded", "width": 64, "train": {"epochs": 0}}]))
    for m in store.matchups(run_id):
        assert m.status == "error"
        assert m.detail.strip().splitlines()[-1].endswith(
            "model 'loaded' outputs 64 logits per image but cifar10 has 10 classes; its last layer must have "
            "num_classes (10) outputs")
