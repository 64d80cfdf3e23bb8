"""arena: attacks, defenses and models meet as plugins; YAML scenarios set them against each other.

The pipeline reads in file order: scenario -> registry -> training -> matchups -> audit -> store -> leaderboard.
This namespace is the public face, as ``pytest`` is pytest's: it re-exports every type a hook hands out and every
type a plugin or a notebook needs, so nothing outside ``arena`` imports ``arena.<module>``.
"""

import pluggy

from arena.version import __version__

#: Decorator for plugin hook implementations, as ``pytest.hookimpl`` or ``datasette.hookimpl``.
hookimpl = pluggy.HookimplMarker("arena")

from arena.api import Evaluation, evaluate, load_model, open_scenario  # noqa: E402
from arena.cost import Counted, Passes  # noqa: E402
from arena.errors import ArenaError  # noqa: E402
from arena.kinds import (  # noqa: E402
    Attack,
    DataError,
    Dataset,
    Defense,
    Model,
    Param,
    Plugin,
    Postprocessor,
    Preprocessor,
    Suite,
    TrainingDefense,
)
from arena.matchups import Arena  # noqa: E402
from arena.records import Matchup, Run, Status, Verification  # noqa: E402
from arena.registry import PluginError, Registry, unknown_name_message  # noqa: E402
from arena.runtime import Runtime  # noqa: E402
from arena.scenario import Scenario, ScenarioError  # noqa: E402
from arena.store import StoreError  # noqa: E402
from arena.threat import ThreatModel  # noqa: E402
from arena.training import TrainConfig, Trainer  # noqa: E402

__all__ = [
    "Arena",
    "ArenaError",
    "Attack",
    "Counted",
    "DataError",
    "Dataset",
    "Defense",
    "Evaluation",
    "Matchup",
    "Model",
    "Param",
    "Passes",
    "Plugin",
    "PluginError",
    "Postprocessor",
    "Preprocessor",
    "Registry",
    "Run",
    "Runtime",
    "Scenario",
    "ScenarioError",
    "Status",
    "StoreError",
    "Suite",
    "ThreatModel",
    "TrainConfig",
    "Trainer",
    "TrainingDefense",
    "Verification",
    "__version__",
    "evaluate",
    "hookimpl",
    "load_model",
    "open_scenario",
    "unknown_name_message",
]
