"""The standing board as a static, self-contained site: ``index.html`` with one tab per threat model, sortable
columns, a filter box, every flag with its reason and provenance, and each run's own report under ``reports/``.
No server and nothing fetched: open ``index.html`` from disk or publish the folder as it is.
"""

from __future__ import annotations

import html
from datetime import UTC, datetime
from pathlib import Path

from arena.leaderboard import board
from arena.report import write_report
from arena.standing import Entry, Source, Threat, data_label, load, percent
from arena.store import Store
from arena.untrusted import child
from arena.version import __version__

_CSS = """body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}h1{font-size:1.3em;margin:0 0 .3em}
.meta{color:#666;margin:.2em 0 1em}#filter{font:inherit;padding:.35em .6em;width:28em;max-width:100%}
nav{margin:1em 0 .5em}nav button{font:inherit;padding:.4em .9em;border:1px solid #bbb;background:#f4f4f4;
cursor:pointer;border-radius:4px 4px 0 0}nav button.active{background:#fff;border-bottom-color:#fff;font-weight:600}
table{border-collapse:collapse;width:100%}th,td{padding:.3em .6em;border-bottom:1px solid #ddd;text-align:left;
vertical-align:top}th{background:#f4f4f4;cursor:pointer;user-select:none;white-space:nowrap}
th[aria-sort=ascending]::after{content:" \\25B2"}th[aria-sort=descending]::after{content:" \\25BC"}
td.num{text-align:right;white-space:nowrap}tr.flagged td{background:#fff6e0}tr.reported td{background:#eef3fa;
font-style:italic}ul.flags{margin:0;padding-left:1.1em;color:#a35b00;font-size:.9em}details{font-size:.85em}
dl{display:grid;grid-template-columns:auto 1fr;gap:0 .8em;margin:.3em 0}dt{color:#666}dd{margin:0;word-break:break-all}
.empty{color:#666}td a{white-space:nowrap}ul.by{margin:0;padding:0;list-style:none;white-space:nowrap}
td.flagcell{min-width:16em}"""

_SCRIPT = """"use strict";
const tabs = Array.from(document.querySelectorAll("#tabs button"));
function show(tab) {
  tabs.forEach(b => b.classList.toggle("active", b.dataset.tab === tab));
  document.querySelectorAll("section.threat").forEach(s => { s.hidden = s.dataset.tab !== tab; });
}
tabs.forEach(b => b.addEventListener("click", () => show(b.dataset.tab)));
function value(row, index, numeric) {
  const cell = row.cells[index];
  if (!numeric) return cell.textContent.trim().toLowerCase();
  return cell.dataset.value === "" ? null : Number(cell.dataset.value);
}
function sortBy(th) {
  const table = th.closest("table");
  const index = Array.from(th.parentNode.children).indexOf(th);
  const numeric = th.dataset.type === "num";
  const ascending = th.getAttribute("aria-sort") !== "ascending";
  table.querySelectorAll("th").forEach(h => h.removeAttribute("aria-sort"));
  th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
  const body = table.tBodies[0];
  const rows = Array.from(body.rows);
  rows.sort((a, b) => {
    const x = value(a, index, numeric), y = value(b, index, numeric);
    if (x === null || y === null) return (x === null) - (y === null);  /* no number: always last */
    const order = numeric ? x - y : x.localeCompare(y);
    return ascending ? order : -order;
  });
  rows.forEach(r => body.appendChild(r));
}
document.querySelectorAll("table.board th").forEach(th => th.addEventListener("click", () => sortBy(th)));
const filter = document.getElementById("filter");
function applyFilter() {
  const words = filter.value.trim().toLowerCase().split(/\\s+/).filter(Boolean);
  document.querySelectorAll("section.threat").forEach(section => {
    let shown = 0;
    section.querySelectorAll("tbody tr").forEach(row => {
      const text = row.textContent.toLowerCase();
      row.hidden = !words.every(w => text.includes(w));
      shown += row.hidden ? 0 : 1;
    });
    section.querySelector(".empty").hidden = shown > 0;
  });
}
filter.addEventListener("input", applyFilter);
const start = location.hash.slice(1);  /* index.html#1 opens the second threat model */
show(tabs.some(b => b.dataset.tab === start) ? start : "0");
"""

#: The columns, and those that sort as numbers.
_COLUMNS = ["rank", "model", "defense", "kind", "clean", "best known", "achieved by", "samples", "runs",
            "passes/sample", "verified", "flags", "provenance"]
_NUMERIC = {"rank", "clean", "best known", "samples", "passes/sample"}


def _provenance(source: Source) -> str:
    """One run's provenance as a definition list."""
    fields = [("run", source.run), ("results folder", source.results), ("scenario", source.scenario),
              ("scenario hash", source.scenario_digest), ("arena", source.arena_version),
              ("weights key", source.weights_key or "-"), ("weights from", source.weights_source or "-"),
              ("data fingerprint", source.data_fingerprint or "-"),
              ("seed", source.seed), ("device", source.device), ("precision", source.precision),
              ("date", source.started_at), ("status", source.status), ("attacks", ", ".join(source.attacks)),
              ("suites", ", ".join(source.suites) or "-"),
              ("passes/sample", "-" if source.passes_per_sample is None else f"{source.passes_per_sample:.1f}")]
    return "<dl>" + "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(str(v))}</dd>" for k, v in fields) + "</dl>"


def _row(entry: Entry) -> str:
    """One table row; numeric cells carry their raw value for sorting."""
    links = "".join(f'<li><a href="{html.escape(s.report)}">{html.escape(s.run)}</a></li>' if s.report
                    else f"<li>{html.escape(s.run)}</li>" for s in entry.sources)
    if entry.kind == "reported":
        links = f'<li>{html.escape(Path(entry.reported.get("file", "")).name)}</li>'

    flags = "".join(f"<li>{html.escape(f)}</li>" for f in entry.flags)
    provenance = "".join(_provenance(s) for s in entry.sources)
    if entry.kind == "reported":
        provenance = _provenance_reported(entry)
    cells = {
        "rank": (str(entry.rank or "-"), entry.rank), "model": (entry.model, None), "defense": (entry.defense, None),
        "kind": (entry.kind, None), "clean": (percent(entry.clean_accuracy), entry.clean_accuracy),
        "best known": (percent(entry.worst_case), entry.worst_case),
        "samples": (str(entry.samples or "-"), entry.samples or None),
        "passes/sample": ("-" if entry.passes is None else f"{entry.passes:.1f}", entry.passes),
    }
    out = []
    for column in _COLUMNS:
        if column == "runs":
            out.append(f'<td><ul class="by">{links}</ul></td>')
        elif column == "achieved by":
            parts = [a.partition(" @ ") for a in entry.achieved_by]
            items = "".join(f"<li>{html.escape(attack)} <small>@ {html.escape(run)}</small></li>"
                            for attack, _, run in parts)
            out.append(f'<td><ul class="by">{items}</ul></td>')
        elif column == "verified":
            out.append(_verified(entry))
        elif column == "flags":
            out.append(f'<td class="flagcell"><ul class="flags">{flags}</ul></td>' if flags else "<td></td>")
        elif column == "provenance":
            count = len(entry.sources) or 1
            out.append(f"<td><details><summary>{count} source{'s' * (count != 1)}</summary>{provenance}</details></td>")
        else:
            text, raw = cells[column]
            numeric = column in _NUMERIC
            attrs = f' class="num" data-value="{"" if raw is None else raw}"' if numeric else ""
            note = f"<br><small>{html.escape(data_label(entry.sample_set))}</small>" \
                if column == "samples" and entry.sample_set else ""
            out.append(f"<td{attrs}>{html.escape(text)}{note}</td>")
    classes = " ".join(c for c in (entry.kind, "flagged" if entry.flags and entry.kind == "measured" else "") if c)
    return f'<tr class="{classes}">{"".join(out)}</tr>'


def _verified(entry: Entry) -> str:
    """The entry's ``arena verify`` mark, its external attacks, and the command that checks it."""
    if entry.kind != "measured":
        return "<td></td>"
    external = f"<br><small>external: {html.escape(', '.join(entry.external))}</small>" if entry.external else ""
    return (f'<td class="verified">{html.escape(entry.verification)}{external}<br>'
            f"<code>arena verify {html.escape(entry.name)}</code></td>")


def _provenance_reported(entry: Entry) -> str:
    return "<dl>" + "".join(f"<dt>{html.escape(str(k))}</dt><dd>{html.escape(str(v))}</dd>"
                            for k, v in entry.reported.items()) + "</dl>"


def page(board_: dict[Threat, list[Entry]], folders: list[str]) -> str:
    """The whole site's ``index.html``: one section per threat model, switched by tabs."""
    head = "".join(f'<th data-type="{"num" if c in _NUMERIC else "text"}">{html.escape(c)}</th>' for c in _COLUMNS)
    tabs, sections = [], []
    for index, (threat, entries) in enumerate(board_.items()):
        measured = sum(e.kind == "measured" for e in entries)
        tabs.append(f'<button type="button" data-tab="{index}">{html.escape(str(threat))} ({measured})</button>')
        sections.append(
            f'<section class="threat" data-tab="{index}"><h2>{html.escape(str(threat))}</h2>'
            f'<table class="board"><thead><tr>{head}</tr></thead><tbody>{"".join(map(_row, entries))}</tbody></table>'
            f'<p class="empty" hidden>no row matches the filter</p></section>')
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    meta = (f"best known worst case per entry over every valid attack of every run on the same images · "
            f"{len(folders)} results folder(s): {', '.join(folders)} · arena {__version__} · {stamp}")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>arena standing leaderboard</title>'
            f'<style>{_CSS}</style></head><body><h1>arena standing leaderboard</h1><p class="meta">'
            f'{html.escape(meta)}</p><input id="filter" type="search" placeholder="filter rows: model, attack, run, '
            f'flag…" aria-label="filter rows"><nav id="tabs">{"".join(tabs)}</nav>{"".join(sections)}'
            f'<script>{_SCRIPT}</script></body></html>\n')


def write_site(stores: list[Store], board_: dict[Threat, list[Entry]], out: Path) -> Path:
    """Write ``out/index.html`` and each run's report into ``out/reports/<run id>/``; returns the index page."""
    wanted = {s.run for entries in board_.values() for e in entries for s in e.sources}
    for store, run in load(stores):
        if run.id in wanted:
            write_report(store, run, board(store, run), child(out, "reports", run.id))
    for entries in board_.values():
        for source in (s for e in entries for s in e.sources):
            source.report = f"reports/{source.run}/leaderboard.html"
    index = child(out, "index.html")
    index.write_text(page(board_, [str(s.results_dir) for s in stores]), encoding="utf-8")
    return index
