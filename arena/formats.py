"""Tables ready to show, and the one renderer of every text table: a leaderboard, the standing board, a comparison
or a listing becomes a terminal table that fits 120 columns, Markdown, CSV, JSON or an HTML page.
"""

from __future__ import annotations

import csv
import io
import json
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from arena.records import Status

FORMATS = ("table", "md", "csv", "json", "html")
#: Terminal width the default text view fits (``--wide`` shows every column, unwrapped).
WIDTH = 120
#: A text column is wrapped down to this width at the narrowest (a numeric one keeps its values whole).
NARROWEST = 10
GAP = "  "


@dataclass
class Table:
    """Columns and records ready to render: numbers stay fractions until a format shows them."""

    title: str
    columns: list[str]
    records: list[dict[str, Any]]
    percent: set[str] = field(default_factory=set)
    #: Columns the default text view leaves out (``--wide``, the HTML page and the other formats show them).
    details: set[str] = field(default_factory=set)


def cell(value: Any, percent: bool = False) -> str:
    """One value as a table shows it: fractions as percentages, ``-`` for none, failures in capitals."""
    if value is None:
        return "-"
    if isinstance(value, list):
        return "; ".join(value)
    if isinstance(value, str):
        return value.upper() if value in (Status.INVALID, Status.ERROR) else value
    return f"{100 * value:.1f}%" if percent else str(value)


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[bool] = (),
               width: int | None = WIDTH) -> list[str]:
    """Columns two spaces apart, numeric ones right-aligned; with ``width``, the widest columns wrap (text at word
    boundaries, a numeric column only in its header) until the table fits or every column is at its narrowest."""
    numeric = list(numeric) or [False] * len(header)
    natural = [max(map(len, column)) for column in zip(header, *rows)]
    narrowest = [max((len(r[i]) for r in rows), default=1) if numeric[i] else min(natural[i], NARROWEST)
                 for i in range(len(header))]
    widths = list(natural)
    while width and sum(widths) + len(GAP) * (len(widths) - 1) > width:
        shrinkable = [i for i, w in enumerate(widths) if w > narrowest[i]]
        if not shrinkable:
            break
        widths[max(shrinkable, key=lambda i: widths[i])] -= 1
    lines = []
    for row in [header, *rows]:
        wrapped = [textwrap.wrap(text, w, break_on_hyphens=False) or [""] for text, w in zip(row, widths)]
        for depth in range(max(map(len, wrapped))):
            parts = [(c[depth] if depth < len(c) else "") for c in wrapped]
            lines.append(GAP.join(p.rjust(w) if numeric[i] and row is not header else p.ljust(w)
                                  for i, (p, w) in enumerate(zip(parts, widths))).rstrip())
    return lines


def wrap(text: str, width: int | None = WIDTH, indent: str = "  ") -> list[str]:
    """A long line (a title, a flag) wrapped to ``width``, continued under an indent; whole when ``width`` is None."""
    return textwrap.wrap(text, width, subsequent_indent=indent, break_on_hyphens=False) if width else [text]


def render(table: Table, fmt: str = "table", images: Sequence[str] = (), wide: bool = False) -> str:
    """``table`` in one of ``FORMATS``; ``images`` (file names beside the HTML page) are shown under it; ``wide``
    shows every column of the text table, unwrapped."""
    if fmt == "json":
        return json.dumps({"title": table.title, "rows": table.records}, indent=2)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, table.columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows({c: cell(r[c]) if isinstance(r.get(c), list) else "" if r.get(c) is None else r[c]
                          for c in table.columns} for r in table.records)
        return out.getvalue()
    shown = [[cell(r.get(c), c in table.percent) for c in table.columns] for r in table.records]
    if fmt == "md":
        lines = [f"**{table.title}**", "", "| " + " | ".join(table.columns) + " |",
                 "|" + "---|" * len(table.columns), *("| " + " | ".join(c.replace("|", "/") for c in line) + " |"
                                                      for line in shown)]
        return "\n".join(lines)
    if fmt == "html":
        from arena.pages import table_page

        return table_page(table, shown, images)
    width = None if wide else WIDTH
    kept = [i for i, c in enumerate(table.columns) if c != "flags" and (wide or c not in table.details)]
    lines = wrap(table.title, width)
    lines += text_table([table.columns[i] for i in kept], [[line[i] for i in kept] for line in shown],
                        [table.columns[i] in table.percent for i in kept], width)
    if "flags" in table.columns:
        for r in table.records:
            for flag in r["flags"]:
                lines += wrap(f"⚑ {r['model']}+{r['defense']}: {flag}", width)
    return "\n".join(lines)

