"""arena: attacks, defenses and models meet as plugins; YAML scenarios set them against each other.

The pipeline reads in file order: scenario -> registry -> training -> matchups -> audit -> store -> leaderboard.
"""

import pluggy

__version__ = "0.1.0"

#: Decorator for plugin hook implementations, as ``pytest.hookimpl`` or ``datasette.hookimpl``.
hookimpl = pluggy.HookimplMarker("arena")

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
from arena.threat import ThreatModel  # noqa: E402

__all__ = [
    "Attack",
    "DataError",
    "Dataset",
    "Defense",
    "Model",
    "Param",
    "Plugin",
    "Postprocessor",
    "Preprocessor",
    "Suite",
    "ThreatModel",
    "TrainingDefense",
    "__version__",
    "hookimpl",
]
