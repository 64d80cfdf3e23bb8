"""arena: attacks, defenses and models meet as plugins; YAML scenarios set them against each other.

The pipeline reads in file order: scenario -> registry -> training -> matchups -> audit -> store -> leaderboard.
This namespace is the public face, as ``pytest`` is pytest's: it re-exports every type a hook hands out and every
type a plugin or a notebook needs, so nothing outside ``arena`` imports ``arena.<module>``.
"""

import importlib
from typing import Any

import pluggy

from arena.version import __version__ as __version__

#: Decorator for plugin hook implementations, as ``pytest.hookimpl`` or ``datasette.hookimpl``.
hookimpl = pluggy.HookimplMarker("arena")

#: Where each re-exported name lives. A name's module is imported when the name is first used, so ``import arena``
#: costs only pluggy: the ``arena`` command handles Ctrl-C before torch and the plugins load (``arena.__main__``).
_EXPORTS = {
    "arena.api": ("Evaluation", "evaluate", "load_model", "open_scenario"),
    "arena.cost": ("Counted", "Passes"),
    "arena.errors": ("ArenaError",),
    "arena.kinds": ("Attack", "DataError", "Dataset", "Defense", "Model", "Param", "Plugin", "Postprocessor",
                    "Preprocessor", "Suite", "TrainingDefense"),
    "arena.matchups": ("Arena",),
    "arena.records": ("GradientPath", "Matchup", "Run", "Status", "Verification"),
    "arena.registry": ("PluginError", "Registry", "unknown_name_message"),
    "arena.running": ("Played", "resolve_device", "run_scenario"),
    "arena.runtime": ("Runtime",),
    "arena.scenario": ("Scenario", "ScenarioError"),
    "arena.store": ("StoreError",),
    "arena.threat": ("ThreatModel",),
    "arena.training": ("TrainConfig", "Trainer"),
}
_HOME = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name: str) -> Any:
    """``arena.Attack`` and ``from arena import Attack``: the name from its module, imported on first use."""
    if name not in _HOME:
        raise AttributeError(f"module 'arena' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOME[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOME})


__all__ = sorted([*_HOME, "hookimpl", "__version__"])
