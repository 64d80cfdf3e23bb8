"""The plugin system: hookspecs, entry-point discovery of built-ins, explicit modules, clashes, did-you-mean."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import types

import arena_test_plugins
import pluggy
import pytest

from arena import Attack, hookimpl, hookspecs
from arena.kinds import KINDS
from arena.registry import AUTOLOAD_ENV, PluginError, load_registry
from arena.version import DISTRIBUTION

SPECS = {name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("arena_")}


def test_every_hookspec_is_implemented_by_the_builtins_loaded_through_entry_points(monkeypatch):
    monkeypatch.setenv(AUTOLOAD_ENV, "1")  # built-ins only: they must still cover every hook
    registry = load_registry()
    assert SPECS == {f"arena_register_{kind}s" for kind in KINDS} | {
        "arena_run_started", "arena_matchup_finished", "arena_run_finished"}
    for spec in SPECS:
        assert getattr(registry.pm.hook, spec).get_hookimpls(), f"no built-in implements {spec}"
    for kind in KINDS:
        infos = [registry.get(kind, name) for name in registry.names(kind)]
        assert infos, f"no built-in {kind}"
        assert all(info.package == DISTRIBUTION for info in infos), "built-ins come through the arena entry points"
    assert {"cnn", "cnn_lstm"} <= set(registry.names("model"))
    assert {"fgsm", "pgd"} <= set(registry.names("attack"))
    assert registry.names("dataset") == ["cifar10", "cifar100", "imagefolder", "npz", "svhn"]
    assert {"none", "art.jpeg", "art.madry_pgd", "fgsm_augmentation"} <= set(registry.names("defense"))


def test_a_plugin_registered_from_a_test_module_is_picked_up():
    registry = load_registry(modules=[arena_test_plugins])
    info = registry.get("attack", "cheat")
    assert info.cls is arena_test_plugins.Cheat and info.provider == "arena_test_plugins" and info.package is None
    assert registry.get("attack", "fgsm").package == DISTRIBUTION  # entry points still load beside it


def test_modules_load_by_import_path_too():
    assert load_registry(modules=["arena_test_plugins"]).get("attack", "mode_probe")


def _module(name: str, **members) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(members)
    sys.modules[name] = module
    return module


def test_a_name_claimed_twice_names_both_providers():
    class Fgsm(Attack):
        name = "fgsm"

    @hookimpl
    def arena_register_attacks(register):
        register(Fgsm)

    clash = _module("clashing_plugin", arena_register_attacks=arena_register_attacks)
    twice = rf"attack .fgsm. is registered twice: by fgsm \({DISTRIBUTION} .*\) and by clashing_plugin"
    with pytest.raises(PluginError, match=twice):
        load_registry(modules=[clash])
    assert load_registry(modules=[clash], blocked=["fgsm"]).get("attack", "fgsm").provider == "clashing_plugin"


def test_a_misspelt_hook_fails_loudly():
    @hookimpl
    def arena_register_attack(register):  # missing the final "s"
        pass

    with pytest.raises(pluggy.PluginValidationError, match="arena_register_attack"):
        load_registry(modules=[_module("misspelt_plugin", arena_register_attack=arena_register_attack)])


def test_registering_something_that_is_not_a_plugin_class_is_explained():
    @hookimpl
    def arena_register_attacks(register):
        register(lambda model, images: images)

    with pytest.raises(PluginError, match="register a subclass of arena.Attack"):
        load_registry(modules=[_module("lambda_plugin", arena_register_attacks=arena_register_attacks)])


def test_unknown_names_get_a_did_you_mean(registry):
    with pytest.raises(PluginError, match=r"unknown attack 'fsgm'; did you mean 'fgsm'\?"):
        registry.get("attack", "fsgm")


#: Toolkits a plugin uses only when it is built or run; importing them costs seconds (torchvision pulls in
#: torch._dynamo), which every command would otherwise pay at startup.
TOOLKITS = ("torchattacks", "art", "torchvision", "pyautoattack", "timm", "robustbench", "matplotlib", "mlflow", "ray")


def test_registering_listing_validating_and_help_import_no_toolkit():
    script = """
import contextlib, io, json, sys
from arena.cli import main
from arena.registry import load_registry
load_registry()
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    codes = [main(["plugins"]), main(["plugins", "--json"]), main(["validate", "autoattack"]),
             main(["validate", "quickstart"])]
    with contextlib.suppress(SystemExit):
        main(["--help"])
print(json.dumps({"codes": codes, "modules": sorted(sys.modules)}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    found = json.loads(done.stdout.splitlines()[-1])
    assert found["codes"] == [0, 0, 0, 0]
    assert "arena_plugins.art_defenses" in found["modules"] and "arena_plugins.pgd" in found["modules"]
    imported = sorted({m.split(".")[0] for m in found["modules"]} & set(TOOLKITS))
    assert not imported, f"imported at startup, before any plugin is built: {imported}"
