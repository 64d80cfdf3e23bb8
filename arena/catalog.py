"""What ``arena plugins`` shows: every registered plugin, reporters included, grouped by kind, one line each (its name
and the first sentence of its description), each one's parameters with ``--verbose``, or all of it as JSON."""

from __future__ import annotations

import re
import shutil
import sys
import textwrap
from typing import Any

from arena.hookspecs import HOOKSPEC_VERSION
from arena.registry import Registry
from arena.version import DISTRIBUTION

#: The widest listing, whatever the terminal.
WIDTH = 120


def plain(text: str) -> str:
    """Docstring markup as a terminal shows it: ````code````, ```code``` and ``:role:`target``` without backticks."""
    return re.sub(r"(?::[\w:]+:)?(``?)([^`]+?)\1", r"\2", text)


def _origin(package: str | None, version: str | None, provider: str) -> str:
    """Where a plugin comes from, when not from the arena itself: its package, or the module ``-p`` named."""
    if package == DISTRIBUTION:
        return ""
    return f" [{package} {version}]" if package else f" [{provider}]"


def as_json(registry: Registry) -> dict[str, Any]:
    """Every plugin and reporter with its kind, origin, description and parameters, and the entry points that failed."""
    plugins = [
        {"kind": info.kind, "stage": getattr(info.cls, "stage", None), "name": info.name, "provider": info.provider,
         "package": info.package, "version": info.version, "description": info.cls.description(),
         "params": {key: param.describe() for key, param in info.cls.params.items()}}
        for info in registry
    ]
    plugins += [
        {"kind": "reporter", "stage": None, "name": info.name, "provider": info.name, "package": info.package,
         "version": info.version, "description": info.description, "params": {}, "hooks": list(info.hooks)}
        for info in registry.reporters()
    ]
    return {"hookspec_version": HOOKSPEC_VERSION, "plugins": plugins, "errors": registry.load_errors}


def lines(registry: Registry, verbose: bool = False, width: int | None = None) -> list[str]:
    """The listing, one group per kind, wrapped to ``width``: a first sentence too long for its line goes on under its
    own column rather than being cut."""
    if width is None:  # a terminal's width, at most WIDTH; WIDTH into a file or pipe
        width = min(WIDTH, shutil.get_terminal_size((WIDTH, 24)).columns) if sys.stdout.isatty() else WIDTH
    groups: dict[str, list[tuple[str, str, list[str]]]] = {}
    for info in registry:
        stage = getattr(info.cls, "stage", "none")
        groups.setdefault(info.kind, []).append((
            info.name, plain(info.cls.description()) + _origin(info.package, info.version, info.provider),
            ([f"stage: {stage}"] if stage != "none" else [])
            + [f"{key}: {param.describe()}" + (f"; {plain(param.help)}" if param.help else "")
               for key, param in info.cls.params.items()]))
    for reporter in registry.reporters():
        groups.setdefault("reporter", []).append((
            reporter.name, plain(reporter.description) + _origin(reporter.package, reporter.version, reporter.name),
            [f"hooks: {', '.join(reporter.hooks)}"]))
    listing: list[str] = []
    for kind, rows in groups.items():
        name_width = max(len(name) for name, _, _ in rows)
        indent = " " * (name_width + 4)
        wrap = textwrap.TextWrapper(width=max(width, len(indent) + 40), subsequent_indent=indent,
                                    break_on_hyphens=False)
        detail = textwrap.TextWrapper(width=wrap.width, initial_indent=indent + "  ", subsequent_indent=indent + "    ",
                                      break_on_hyphens=False)
        listing += [*([""] if listing else []), f"{kind}s"]
        for name, description, details in rows:
            listing += wrap.wrap(f"  {name:{name_width}}  {description}".rstrip())
            listing += [line for text in details for line in detail.wrap(text)] if verbose else []
    return listing
