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


def test_the_python_api_page_runs_as_written(tmp_path, monkeypatch):
    """docs/python-api.md: its blocks run in order, in one namespace, from an empty folder."""
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for index, code in enumerate(_code_blocks((REPO / "docs" / "python-api.md").read_text(encoding="utf-8"))):
        exec(compile(code, f"python-api.md block {index}", "exec"), namespace)


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
    assert "cheat" not in result.robust_accuracy and "cheat" not in result.robust_correct
    assert result.failed["cheat"].startswith("invalid: ") and "> ε" in result.failed["cheat"]
    [cheat] = [m for m in result.matchups if m.attack == "cheat"]
    assert cheat.status == "invalid" and "> ε" in cheat.detail, "a plugin outside ε fails its audit"
    assert result.worst_case_correct.tolist() == result.robust_correct["fgsm"].tolist()
    assert len(result.clean_correct) == 64 and result.run.threat == arena.ThreatModel("linf", 0.05)
    code, out, _ = run_cli(capsys, "leaderboard", "--results", str(tmp_path / "r"))
    assert code == 0 and "untrained" in out and result.run.id in out


@pytest.fixture(scope="module")
def small(data):
    """A fast model (one linear layer, fitted to them) and 16 real test images: what the argument tests attack."""
    torch.manual_seed(0)
    linear = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    images, labels = data[1][:16], data[2][:16]
    optimizer = torch.optim.Adam(linear.parameters(), lr=1e-3)
    for _ in range(50):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(linear(images), labels).backward()
        optimizer.step()
    return linear.eval(), images, labels


def test_evaluate_returns_the_worst_case_adversarial_images(small):
    model, images, labels = small
    result = arena.evaluate(model, images, labels, attacks=["fgsm", "pgd"], threat=("Linf", "64/255"))
    adversarial = result.adversarial
    assert isinstance(adversarial, torch.Tensor) and adversarial.shape == images.shape
    broken = result.clean_correct & ~result.worst_case_correct
    assert broken.any(), "a linear model breaks at 64/255"
    changed = (adversarial != images).flatten(1).any(1).numpy()
    assert not (changed & ~broken).any(), "a sample no attack broke keeps its clean image"
    assert (adversarial - images).abs().max() <= 64 / 255 + 1e-6 and 0 <= adversarial.min() <= adversarial.max() <= 1
    with torch.no_grad():
        predicted = model(adversarial).argmax(1).numpy()
    assert (predicted[broken] != labels.numpy()[broken]).all(), "each returned example fools the model"


def test_evaluate_takes_numpy_nhwc_and_uint8_images(small):
    model, images, labels = small
    as_tensor = arena.evaluate(model, images, labels, attacks="fgsm", threat=arena.ThreatModel("linf", 4 / 255))
    nhwc = images.permute(0, 2, 3, 1).numpy()
    as_numpy = arena.evaluate(model, nhwc, labels.numpy(), "fgsm", ("linf", 4 / 255))  # attacks, threat in order
    assert as_numpy.robust_accuracy == as_tensor.robust_accuracy
    assert isinstance(as_numpy.adversarial, np.ndarray) and as_numpy.adversarial.shape == nhwc.shape
    np.testing.assert_array_equal(as_numpy.adversarial, as_tensor.adversarial.permute(0, 2, 3, 1).numpy())
    quantized = (images * 255).round().to(torch.uint8)
    with pytest.warns(UserWarning, match=r"images are uint8 \(0-255\); divided by 255"):
        as_uint8 = arena.evaluate(model, quantized.permute(0, 2, 3, 1).numpy(), labels.tolist(), attacks="fgsm",
                                  threat=("L2", 0.5))
    assert as_uint8.run.threat == arena.ThreatModel("l2", 0.5) and len(as_uint8.clean_correct) == 16


def test_evaluate_runs_a_suite_by_name_and_reports_skipped_members(small):
    model, images, labels = small
    result = arena.evaluate(model, images[:8], labels[:8], attacks="fast", threat=("Linf", 8 / 255))
    assert all(name.startswith("fast/") for name in [*result.robust_accuracy, *result.skipped])
    assert result.skipped, "the full Square runs only where the checks doubt the gradients"
    assert all(isinstance(reason, str) and reason for reason in result.skipped.values())
    assert all(isinstance(value, float) for value in result.robust_accuracy.values())
    assert result.worst_case <= min(result.robust_accuracy.values()) <= result.clean_accuracy


def test_evaluate_loads_a_dataset_itself(small, monkeypatch, scenario_data_dir):
    model, images, labels = small
    result = arena.evaluate(model, dataset="cifar10", n_examples=16, attacks="fgsm", threat=("linf", 2 / 255))
    given = arena.evaluate(model, images, labels, attacks="fgsm", threat=("linf", 2 / 255))
    assert result.robust_accuracy == given.robust_accuracy and result.run.samples == 16
    assert result.adversarial.shape == (16, 3, 32, 32)


BAD_ARGUMENTS = [
    ({"images": "pictures"}, r"^images: got str; give a float tensor or NumPy array"),
    ({"images": torch.rand(3, 32, 32)}, r"^images: shape \(3, 32, 32\); give a batch .* \(one image: images\[None\]\)"),
    ({"images": torch.rand(2, 5, 5, 5)}, r"^images: shape \(2, 5, 5, 5\) has no channel axis"),
    ({"images": "x255"}, r"^images: values span \[0, 2\d\d.*\], outside \[0, 1\]; divide 0-255 images by 255"),
    ({"images": "int64"}, r"^images: dtype torch.int64; give float values in \[0, 1\]"),
    ({"images": "nan"}, r"^images: contain NaN"),
    ({"labels": None}, r"^labels: missing"),
    ({"labels": "short"}, r"^labels: 3 labels for 16 images; give one label per image"),
    ({"labels": "onehot"}, r"^labels: shape \(16, 10\) looks one-hot; give class indices"),
    ({"labels": "float"}, r"^labels: dtype torch.float32; give integer class indices"),
    ({"labels": "eleven"}, r"^labels: values span 0\.\.11, but the model outputs 10 logits; give class indices in "
                           r"0\.\.9"),
    ({"model": "resnet"}, r"^model: got str; give a torch.nn.Module"),
    ({"model": "failing"}, r"^model: fails on one image of shape \(3, 32, 32\) \(RuntimeError: mat1 and mat2"),
    ({"attacks": "fsgm"}, r"^evaluate: attacks\[0\]\.name: unknown attack 'fsgm'; did you mean 'fgsm'\? "
                          r"\(known: .*autoattack.*fast.*\)"),
    ({"attacks": []}, r"^attacks: the list is empty; give a name \('fgsm', 'fast'\)"),
    ({"attacks": ["fgsm", 3]}, r"^attacks\[1\]: got int; give a name"),
    ({"attacks": {"name": "pgd", "stepz": 3}}, r"^evaluate: attacks\[0\]\.stepz: unknown field 'stepz'; did you "
                                               r"mean 'steps'"),
    ({"defenses": ["art.jpeg", "art.jepg"]}, r"^evaluate: defenses\[1\]\.name: unknown defense 'art.jepg'"),
    ({"threat": None}, r"^threat: missing; give arena.ThreatModel\('linf', 8/255\) or a \(norm, eps\) pair"),
    ({"threat": 0.03}, r"^threat: got 0\.03; give arena.ThreatModel\('linf', 8/255\) or a \(norm, eps\) pair"),
    ({"threat": ("l3", 0.1)}, r"^threat: unknown norm 'l3'; use 'Linf' or 'L2'"),
    ({"threat": ("linf", -1)}, r"^threat: ε -1 is not a number > 0"),
    ({"threat": arena.ThreatModel("linf", 2.0)}, r"^evaluate: threat: L∞ ε = 2 lets an attack reach any image"),
    ({"device": "tpu"}, r"^device tpu: not a device; use cpu, cuda, cuda:N or auto"),
    ({"batch_size": 0}, r"^evaluate: batch_size: Input should be greater than or equal to 1 \(got 0\)"),
    ({"evaluation": "quick"}, r"^evaluate: evaluation: Input should be 'full' or 'cascade' \(got 'quick'\)"),
    ({"name": 3}, r"^evaluate: name: Input should be a valid string \(got 3\)"),
    ({"runtime": "bf16"}, r"^runtime: got str; give arena.Runtime\(...\)"),
    ({"n_examples": 0}, r"^n_examples: got 0; give a whole number ≥ 1"),
    ({"images": None, "labels": None}, r"^images: missing; give images and labels, or dataset='cifar10'"),
    ({"dataset": "cifar10"}, r"^dataset: give either images and labels, or dataset= to load a test set, not both"),
    ({"images": None, "labels": None, "dataset": "cifar11"}, r"^evaluate: dataset: unknown dataset 'cifar11'; "
                                                             r"did you mean 'cifar10'"),
    ({"images": None, "labels": None, "dataset": "cifar10", "n_examples": 20_000},
     r"^evaluate: n_examples: 20000 is more than the 10000 images of the test split of cifar10"),
]


@pytest.mark.parametrize(("change", "message"), BAD_ARGUMENTS, ids=[next(iter(c)) + ":" + m[1:30]
                                                                    for c, m in BAD_ARGUMENTS])
def test_evaluate_refuses_each_bad_argument_in_one_line_naming_it(small, tmp_path, change, message):
    model, images, labels = small
    special = {
        "x255": images * 255, "int64": (images * 255).long(), "nan": images.clone().fill_(float("nan")),
        "short": labels[:3], "onehot": torch.nn.functional.one_hot(labels, 10), "float": labels.float(),
        "eleven": labels.clone().index_fill_(0, torch.tensor([0]), 11),
        "failing": torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(7, 10)),
    }
    arguments = {"model": model, "images": images, "labels": labels, "attacks": "fgsm", "threat": ("linf", 0.03),
                 "results": tmp_path / "r"}
    arguments |= {key: special.get(value, value) if isinstance(value, str) else value for key, value in change.items()}
    with pytest.raises(arena.ArenaError, match=message) as raised:
        arena.evaluate(**arguments)
    assert "\n" not in str(raised.value), "one line"
    assert not (tmp_path / "r").exists(), "refused before any work"


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
