"""HTML pages from the Jinja2 templates in ``arena/templates``: a run's leaderboard page and the standing board's
``index.html``. Every value is escaped; Markdown-style backticks in flags become ``<code>``."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Protocol

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup, escape

_BACKTICKS = re.compile(r"`([^`]+)`")


def code(text: str) -> Markup:
    """``text`` escaped, then each `quoted` part set as code (escaping first, so nothing in it becomes markup)."""
    return Markup(_BACKTICKS.sub(r"<code>\1</code>", str(escape(text))))


_ENVIRONMENT = Environment(loader=PackageLoader("arena", "templates"), autoescape=select_autoescape(default=True),
                           trim_blocks=True, lstrip_blocks=True)
_ENVIRONMENT.filters["code"] = code


def render_page(template: str, **context: Any) -> str:
    """One template of ``arena/templates`` filled with ``context``."""
    return _ENVIRONMENT.get_template(template).render(**context)


class Table(Protocol):
    """What a page needs of ``arena.formats.Table`` (declared here so that formats, which renders HTML through this
    module, is not imported back)."""

    title: str
    columns: list[str]
    records: list[dict[str, Any]]
    percent: set[str]


def table_page(table: Table, shown: list[list[str]], images: Sequence[str] = ()) -> str:
    """A leaderboard (or any table) as a self-contained page; each row's flags sit under it, folded."""
    columns = [c for c in table.columns if c != "flags"]
    rows = [{"cells": [(text, "num" if c in table.percent else "text") for c, text in zip(table.columns, line)
                       if c != "flags"],
             "flags": record.get("flags") or []} for record, line in zip(table.records, shown)]
    return render_page("leaderboard.html", title=table.title, columns=columns, rows=rows, images=list(images))
