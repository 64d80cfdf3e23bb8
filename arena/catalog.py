"""What ``arena plugins`` shows: every registered plugin, reporters included, one line each (name, kind, the first
sentence of its description), each one's parameters with ``--verbose``, or all of it as JSON."""

from __future__ import annotations

import re
import shutil
import textwrap
from typing import Any

from arena.hookspecs import HOOKSPEC_VERSION
from arena.registry import PluginInfo, Registry
from arena.version import DISTRIBUTION

#: The widest listing, whatever the terminal.
WIDTH = 120
_STAGES = {"training": "training", "preprocess": "pre", "postprocess": "post"}


def plain(text: str) -> str:
    """Docstring markup as a terminal shows it: ````code````, ```code``` and ``:role:`target``` without backticks."""
    return re.sub(r"(?::[\w:]+:)?(``?)([^`]+?)\1", r"\2", text)


def _kind(info: PluginInfo) -> str:
    stage = _STAGES.get(getattr(info.cls, "stage", ""))
    return f"{info.kind} ({stage})" if stage else info.kind


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
    """The listing, wrapped to ``width`` (the terminal's, at most ``WIDTH``): a long first sentence goes on under
    its own column rather than being cut."""
    width = width or min(WIDTH, shutil.get_terminal_size((WIDTH, 24)).columns)
    rows: list[tuple[str, str, str, list[str]]] = [
        (info.name, _kind(info), plain(info.cls.description()) + _origin(info.package, info.version, info.provider),
         [f"{key}: {param.describe()}" + (f"; {plain(param.help)}" if param.help else "")
          for key, param in info.cls.params.items()])
        for info in registry
    ]
    rows += [
        (info.name, "reporter", plain(info.description) + _origin(info.package, info.version, info.name),
         [f"hooks: {', '.join(info.hooks)}"])
        for info in registry.reporters()
    ]
    name_width = max((len(row[0]) for row in rows), default=0)
    kind_width = max((len(row[1]) for row in rows), default=0)
    indent = " " * (name_width + kind_width + 4)
    wrap = textwrap.TextWrapper(width=max(width, len(indent) + 40), subsequent_indent=indent, break_on_hyphens=False)
    listing = []
    for name, kind, description, details in rows:
        listing += wrap.wrap(f"{name:{name_width}}  {kind:{kind_width}}  {description}".rstrip())
        if verbose:
            detail = textwrap.TextWrapper(width=wrap.width, initial_indent=indent + "  ",
                                          subsequent_indent=indent + "    ", break_on_hyphens=False)
            listing += [line for text in details for line in detail.wrap(text)]
    return listing
