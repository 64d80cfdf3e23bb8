"""Scenario files: the bundled scenarios, finding and reading a scenario file, the policy for the plugins it
declares, and loading it (``arena.validation`` checks all of it before any work).

The scenario's types live in ``arena.schema`` and are importable from here too, as plugins and user code import them.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
from pathlib import Path

import yaml

from arena.registry import Registry
from arena.safe_yaml import read_yaml
from arena.schema import (
    DATA_ENV,
    DEFAULT_EXAMPLES,
    NO_DEFENSE,
    AttackRef,
    DatasetRef,
    DefenseRef,
    ModelRef,
    PluginRef,
    Scenario,
    ScenarioError,
    SourceRef,
    ThreatSection,
)
from arena.training import TrainConfig
from arena.validation import parse_scenario, resolve_model

__all__ = [
    "DATA_ENV", "DEFAULT_EXAMPLES", "NO_DEFENSE", "AttackRef", "DatasetRef", "DefenseRef", "ModelRef", "PluginRef",
    "Scenario", "ScenarioError", "SourceRef", "ThreatSection", "TrainConfig", "bundled", "check_declared",
    "declared_plugins", "find_scenario", "load_scenario", "parse_scenario", "read_text", "read_yaml", "resolve_model",
]


def bundled() -> dict[str, Path]:
    """The scenarios shipped inside the package (the repository's ``scenarios/``), by file name without ``.yaml``."""
    folder = Path(str(importlib.resources.files("arena.scenarios")))
    return {path.stem: path for path in sorted(folder.glob("*.yaml"))}


def find_scenario(text: str | Path) -> Path:
    """The scenario file ``text`` names: an existing path, else the bundled scenario of that name (``linf_0.1`` or
    ``linf_0.1.yaml``), else the path as given, for ``read_text`` to report."""
    path = Path(text)
    if path.exists() or path.parent != Path("."):
        return path
    return bundled().get(path.name.removesuffix(".yaml"), path)


def read_text(path: Path) -> str:
    """A scenario file's text; raises ``ScenarioError`` for a file that is missing, unreadable or not UTF-8."""
    if not path.is_file():
        hint = f"; bundled scenarios, runnable by name: {', '.join(bundled())} (`arena scenarios` describes them)" \
            if not path.exists() else " (it is not a file)"
        raise ScenarioError(f"{path}: scenario file not found{hint}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ScenarioError(f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
                            "save the scenario as UTF-8") from None
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot be read ({exc.strerror}); check its permissions") from None


def declared_plugins(path: str | Path) -> list[str]:
    """The scenario's ``plugins:`` list, ``.py`` files made relative to the scenario's folder; read before the
    registry is built, since the scenario's plugins must be registered to validate it. Malformed files give []
    here and a full report from ``load_scenario``."""
    try:
        data, _ = read_yaml(read_text(Path(path)))
    except (ScenarioError, yaml.YAMLError, RecursionError):
        return []
    entries = data.get("plugins") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        return []
    folder = Path(path).parent
    return [str(folder / e) if e.endswith(".py") else e for e in entries if isinstance(e, str)]


def check_declared(path: str | Path, declared: list[str], allow_outside: bool = False) -> None:
    """The policy for a scenario's ``plugins:`` (they are code, and a scenario may come from someone else): a
    ``.py`` file must lie inside the scenario's folder (no ``..``, no absolute path) unless ``allow_outside``; an
    import path must name an installed module. Raises ``ScenarioError`` before anything is imported."""
    folder = Path(path).parent.resolve()
    problems = []
    for index, entry in enumerate(declared):
        if entry.endswith(".py"):
            file = Path(entry).resolve()
            if not allow_outside and not file.is_relative_to(folder):
                problems.append(f"plugins[{index}]: {file} is outside the scenario's folder {folder}; move the file "
                                "beside the scenario, or pass --allow-plugins-outside if you trust it")
            elif not file.is_file():
                problems.append(f"plugins[{index}]: no such file {file}")
        elif importlib.util.find_spec(entry.split(".")[0]) is None:
            problems.append(f"plugins[{index}]: {entry!r} is not an installed module; install its package, or name "
                            "a .py file beside the scenario")
    if problems:
        count = f"{len(problems)} problem{'s' * (len(problems) > 1)}"
        raise ScenarioError(f"{path}: plugins: {count}; nothing was loaded or run:\n  " + "\n  ".join(problems))


def load_scenario(path: str | Path, registry: Registry) -> Scenario:
    """Read and fully validate the scenario at ``path``; raises ``ScenarioError`` listing every problem."""
    path = Path(path)
    return parse_scenario(read_text(path), str(path), registry)
