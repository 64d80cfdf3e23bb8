"""MkDocs hook: writes the plugin reference page from the live registry, so it lists what the code declares.

Every built-in plugin (the ``adversarial-arena`` entry points only, whatever else is installed), its kind, the first
paragraph of its docstring and each declared ``Param``: type, default, allowed values and help sentence.
"""

from __future__ import annotations

import inspect
import os
import re
from pathlib import Path
from typing import Any

import yaml

MARKER = "<!-- plugin reference -->"
REPORTER_HOOKS = ("arena_run_started", "arena_matchup_finished", "arena_run_finished")


def _markdown(text: str) -> str:
    """reStructuredText literals (``x``) as Markdown code (`x`), on one line."""
    return re.sub(r"``(.+?)``", r"`\1`", " ".join(text.split()))


def _first_paragraph(doc: str | None) -> str:
    return _markdown(inspect.cleandoc(doc or "").split("\n\n")[0])


def _default(value: Any) -> str:
    """A default as a scenario writes it (``true``, ``null`` shown as unset, ``cifar10``)."""
    if value is None:
        return "unset"
    text = yaml.safe_dump(str(value) if isinstance(value, Path) else value, default_flow_style=True)
    return f"`{text.removesuffix(chr(10)).removesuffix(chr(10) + '...')}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def builtin_registry() -> Any:
    """The registry of the arena's own plugins, third-party entry points left out."""
    from arena.registry import AUTOLOAD_ENV, load_registry

    saved = os.environ.get(AUTOLOAD_ENV)
    os.environ[AUTOLOAD_ENV] = "1"
    try:
        return load_registry()
    finally:
        if saved is None:
            del os.environ[AUTOLOAD_ENV]
        else:
            os.environ[AUTOLOAD_ENV] = saved


def reference() -> str:
    """The reference as Markdown: one section per plugin kind, one entry per plugin, a table of its parameters."""
    from arena.kinds import KINDS

    registry = builtin_registry()
    out: list[str] = []
    for kind in KINDS:
        infos = [registry.plugins[kind][name] for name in registry.names(kind)]
        out += [f"## {kind.capitalize()}s", ""]
        for info in infos:
            stage = getattr(info.cls, "stage", None)
            out += [f"### `{info.name}`", "", f"*{kind}{f', {stage}' if stage else ''}*: "
                    f"{_first_paragraph(info.cls.__doc__)}", ""]
            if not info.cls.params:
                out += ["No parameters.", ""]
                continue
            out += ["| parameter | type | default | allowed | what it does |", "| --- | --- | --- | --- | --- |"]
            for key, param in info.cls.params.items():
                kind_name = param.type.__name__ + (" or null" if param.nullable else "")
                default = "required" if param.required else _default(param.default)
                allowed = [f"{op} {value:g}" for op, value in (("≥", param.ge), (">", param.gt), ("≤", param.le))
                           if value is not None]
                if param.choices:
                    allowed.append("one of " + ", ".join(f"`{choice}`" for choice in param.choices))
                out.append(f"| `{key}` | {kind_name} | {_cell(default)} | {_cell(', '.join(allowed))} | "
                           f"{_cell(_markdown(param.help))} |")
            out.append("")
    reporters = sorted({impl.plugin_name for hook in REPORTER_HOOKS
                        for impl in getattr(registry.pm.hook, hook).get_hookimpls()})
    out += ["## Reporters", "", "Reporters take no parameters; opt-in ones act only when a scenario's `report_to` "
            "(or `--report-to`) names them.", ""]
    for name in reporters:
        out += [f"### `{name}`", "", _first_paragraph(registry.pm.get_plugin(name).__doc__), ""]
    return "\n".join(out)


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    """Fill the reference page's marker; every other page is left as written."""
    return markdown.replace(MARKER, reference()) if MARKER in markdown else markdown
