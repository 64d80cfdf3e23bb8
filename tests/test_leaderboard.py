"""Leaderboard: worst case on hand-made results, trust flags, formats, comparisons, sweeps, pictures, HTML page."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from conftest import matchup, run_cli, tiny, write_scenario

from arena import Run, ThreatModel
from arena.flags import sweep_flags, trust_flags, worst_case
from arena.formats import FORMATS, render, text_table
from arena.leaderboard import leaderboard_table, rows
from arena.pages import code
from arena.store import Store

RUN = Run(id="r1", scenario="hand", scenario_path="hand.yaml", scenario_digest="0", scenario_text="",
          arena_version="0", seed=0, threat=ThreatModel("linf", 0.1), dataset="cifar10", samples=8, device="cpu",
          status="complete", started_at="")


def test_worst_case_counts_a_sample_only_if_every_attack_failed():
    a = matchup("a", (1, 1, 1, 0, 0, 0, 0, 0))  # breaks samples 3-5
    b = matchup("b", (0, 0, 0, 1, 1, 1, 0, 0))  # breaks samples 0-2: a disjoint set
    c = matchup("c", (1, 1, 0, 1, 1, 1, 0, 0))
    assert a.robust_accuracy == b.robust_accuracy == 3 / 8
    assert worst_case([a, b]).tolist() == [False] * 8, "together the two attacks break every sample"
    assert worst_case([a, c]).tolist() == [True, True] + [False] * 6
    crashed = matchup("d", (), status="error")
    [row] = rows([a, c, crashed], RUN)
    assert row.worst_case == 2 / 8 and row.rank is None, "a row with a failed matchup is shown but never ranked"
    assert row.attacks["d"] == "error" and any("d: error" in f for f in row.flags)


def test_rows_rank_by_worst_case_not_by_the_best_attack():
    strong_transfer_only = [matchup("fgsm", (0,) * 8, defense="aug"),
                            matchup("transfer", (1, 1, 1, 1, 1, 1, 0, 0), defense="aug", source="cnn+none")]
    modest = [matchup("fgsm", (1, 1, 0, 0, 0, 0, 0, 0), defense="at"),
              matchup("transfer", (1, 1, 1, 0, 0, 0, 0, 0), defense="at", source="cnn+none")]
    table = rows(strong_transfer_only + modest, RUN)
    assert [(r.defense, r.rank, r.worst_case) for r in table] == [("at", 1, 2 / 8), ("aug", 2, 0.0)]


WHITE = (1, 1, 1, 1, 0, 0, 0, 0)


@pytest.mark.parametrize(
    ("group", "expected"),
    [
        ([matchup("pgd", WHITE), matchup("tr", (1, 0, 0, 0, 0, 0, 0, 0), source="cnn+none")],
         "tr (transfer) broke 3 samples that every white-box attack missed"),
        ([matchup("fgsm", WHITE), matchup("pgd", (0,) * 8), matchup("fgsm_t", (1, 0, 0, 0, 0, 0, 0, 0), source="x")],
         "fgsm_t (transfer) beats white-box fgsm: 12.5% < 50.0%"),
        ([matchup("pgd", WHITE), matchup("noise", (1, 1, 0, 0, 0, 0, 0, 0), gradient_free=True)],
         "noise (gradient-free) broke 2 samples that every white-box attack missed"),
        ([matchup("pgd", (0,) * 8), matchup("tr", (1, 1, 1, 1, 1, 1, 0, 0), source="cnn+none")],
         "robust only to transfer: 75.0% under tr but 0.0% white-box"),
        ([matchup("pgd", WHITE, randomized=["art.gaussian_noise"], eot_samples=1)],
         "pgd: randomized defense (art.gaussian_noise) attacked without EOT"),
        ([matchup("pgd", WHITE, masked=["art.jpeg"])], "pgd: non-differentiable art.jpeg attacked without BPDA"),
    ],
)
def test_each_trust_flag_fires_on_its_case(group, expected):
    flags = trust_flags(group)
    assert len(flags) == 1 and flags[0].startswith(expected), flags


def test_trust_flags_stay_quiet_on_a_sound_evaluation():
    sound = [matchup("pgd", WHITE), matchup("fgsm", (1, 1, 1, 1, 1, 0, 0, 0)),
             matchup("tr", (1, 1, 1, 1, 1, 0, 0, 0), source="cnn+none"),
             matchup("eot", WHITE, randomized=["art.gaussian_noise"], eot_samples=10, bpda=["art.gaussian_noise"]),
             matchup("bpda", WHITE, bpda=["art.jpeg"])]
    assert trust_flags(sound) == []


def test_sweep_flag_fires_when_accuracy_does_not_fall_as_eps_grows():
    flagged = sweep_flags({("cnn", "masked"): [(0.03, 0.40), (0.3, 0.41)], ("cnn", "none"): [(0.03, 0.4), (0.3, 0.0)],
                           ("cnn", "single"): [(0.1, 0.5)], ("cnn", "broken"): [(0.03, 0.0), (0.1, 0.0)]})
    assert list(flagged) == [("cnn", "masked")] and "does not fall as ε grows" in flagged["cnn", "masked"][0]


class _Cells(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.rows, self._in, self._skip = [], False, False

    def handle_starttag(self, tag, attrs):
        if tag == "tr":  # a row's folded trust flags sit in a row of their own under it: not a table row
            self._skip = ("class", "flags") in attrs
            if not self._skip:
                self.rows.append([])
        self._in = tag in ("td", "th") and not self._skip

    def handle_endtag(self, tag):
        self._in = False

    def handle_data(self, data):
        if self._in:
            self.rows[-1].append(data)


def _parse(fmt: str, text: str) -> list[dict[str, str]]:
    """Rows of a rendered leaderboard as column → shown text."""
    if fmt == "json":
        return json.loads(text)["rows"]
    if fmt == "csv":
        return list(csv.DictReader(io.StringIO(text)))
    if fmt == "md":
        lines = [line.strip("|").split(" | ") for line in text.splitlines() if line.startswith("| ")]
        return [dict(zip([c.strip() for c in lines[0]], [c.strip() for c in line])) for line in lines[1:]]
    if fmt == "html":
        parser = _Cells()
        parser.feed(text)
        return [dict(zip(parser.rows[0], line)) for line in parser.rows[1:]]
    lines = text.splitlines()[1:]
    header = re.split(r"\s{2,}", lines[0])
    return [dict(zip(header, re.split(r"\s{2,}", line))) for line in lines[1:] if not line.startswith("⚑")]


def _number(value) -> float:
    return float(value) if not isinstance(value, str) or not value.endswith("%") else float(value[:-1]) / 100


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_round_trips_the_same_numbers(fmt):
    group = [matchup("fgsm", (1, 1, 1, 0, 0, 0, 0, 0)), matchup("pgd", (1, 1, 0, 0, 0, 0, 0, 0)),
             matchup("fgsm", (1, 1, 1, 1, 1, 0, 0, 0), defense="jpeg"), matchup("pgd", WHITE, defense="jpeg")]
    table = rows(group, RUN)
    parsed = _parse(fmt, render(leaderboard_table(RUN, table), fmt, wide=True))
    assert [p["defense"] for p in parsed] == ["jpeg", "none"]
    for row, shown in zip(table, parsed):
        for column, value in [("clean", row.clean_accuracy), ("worst case", row.worst_case),
                              *((a, v) for a, v in row.attacks.items())]:
            assert _number(shown[column]) == pytest.approx(value, abs=0.0005), (fmt, column)
        assert str(shown["samples"]) == "8" and shown["threat"] == "linf ε=0.1"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, registry):
    """A real ε sweep on a small slice: two runs of one scenario, reported with pictures."""
    folder = tmp_path_factory.mktemp("sweep")
    path = write_scenario(folder, tiny(threat_model={"norm": "linf", "eps": [0.01, 0.1]},
                                       defenses=["none", "art.jpeg"],
                                       attacks=["fgsm", {"name": "fgsm", "label": "fgsm_t",
                                                         "source": {"defense": "none"}}]))
    from arena.cli import main

    code = main(["run", str(path), "--results", str(folder / "r"), "--cache-dir", str(folder / "cache"), "-q"])
    assert code == 0
    return folder


def test_a_sweep_plays_one_run_per_eps_and_reports_a_curve(sweep, capsys):
    store = Store(sweep / "r")
    runs = store.runs(scenario="tiny")
    assert sorted(r.threat.eps for r in runs) == [0.01, 0.1]
    small, large = sorted(runs, key=lambda r: r.threat.eps)
    row = {r["model"] + "+" + r["defense"]: r for r in
           json.loads(run_cli(capsys, "leaderboard", "--results", str(sweep / "r"), "--run", small.id,
                              "--format", "json")[1])["rows"]}
    assert row["cnn+none"]["worst case"] > 0
    for run in runs:
        report = sweep / "r" / "reports" / run.id
        for name in ("leaderboard.png", "robustness.png", "examples.png", "leaderboard.html"):
            assert (report / name).stat().st_size > 1000, name
        assert matplotlib.image.imread(report / "robustness.png").std() > 0


def test_a_sweep_gives_each_eps_the_numbers_of_a_run_of_that_eps_alone(sweep, tmp_path):
    """The runs of a sweep share the data, the networks, the model-level checks and the clean predictions; what each
    ε's run stores is what a run of that ε alone stores."""
    from arena.cli import main

    path = write_scenario(tmp_path, tiny(threat_model={"norm": "linf", "eps": 0.1}, defenses=["none", "art.jpeg"],
                                         attacks=["fgsm", {"name": "fgsm", "label": "fgsm_t",
                                                           "source": {"defense": "none"}}]))
    assert main(["run", str(path), "--results", str(tmp_path / "r"), "--cache-dir", str(sweep / "cache"), "-q",
                 "--no-report"]) == 0
    swept, alone = Store(sweep / "r", readonly=True), Store(tmp_path / "r", readonly=True)
    [in_sweep] = [r for r in swept.runs() if r.threat.eps == 0.1]
    by_key = {m.key: m for m in swept.matchups(in_sweep.id)}
    for m in alone.matchups(alone.runs()[0].id):
        other = by_key[m.key]
        assert (m.clean_correct == other.clean_correct).all() and (m.robust_correct == other.robust_correct).all()
        assert m.checks == other.checks, m.attack


def test_a_sweep_loads_trains_and_checks_each_model_once(tmp_path, monkeypatch):
    import arena.checks
    from arena.cli import main
    from arena.data import Data
    from arena.training import Trainer

    calls = {"load": 0, "fit": 0, "outputs": 0}

    def counted(name, function):
        def call(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)
        return call

    monkeypatch.setattr(Data, "load", classmethod(counted("load", Data.load.__func__)))
    monkeypatch.setattr(Trainer, "fit", counted("fit", Trainer.fit))
    monkeypatch.setattr(arena.checks, "outputs", counted("outputs", arena.checks.outputs))
    path = write_scenario(tmp_path, tiny(threat_model={"norm": "linf", "eps": [0.01, 0.03, 0.1]}))
    assert main(["run", str(path), "--results", str(tmp_path / "r"), "--cache-dir", str(tmp_path / "cache"), "-q",
                 "--no-report"]) == 0
    assert len(Store(tmp_path / "r", readonly=True).runs()) == 3
    assert calls == {"load": 1, "fit": 1, "outputs": 1}, "three ε, one model × defense: everything else once"


def test_compare_and_scenario_selection(sweep, capsys):
    store = Store(sweep / "r")
    small, large = sorted(store.runs(), key=lambda r: r.threat.eps)
    code, out, _ = run_cli(capsys, "leaderboard", "--results", str(sweep / "r"), "--compare", small.id, large.id,
                           "--format", "csv")
    parsed = {r["defense"]: r for r in csv.DictReader(io.StringIO(out))}
    assert code == 0 and set(parsed) == {"none", "art.jpeg"}
    none = parsed["none"]
    assert float(none["worst case Δ"]) == pytest.approx(float(none["worst case B"]) - float(none["worst case A"]))
    assert float(none["fgsm Δ"]) < 0, "a larger ε breaks more samples"
    code, out, _ = run_cli(capsys, "leaderboard", "--results", str(sweep / "r"), "--scenario", "tiny")
    assert code == 0 and large.id in out, "the latest run of the scenario: the sweep plays the larger ε last"
    code, _, err = run_cli(capsys, "leaderboard", "--results", str(sweep / "r"), "--scenario", "tinny")
    assert code == 2 and "did you mean 'tiny'" in err
    target = sweep / "board.md"
    assert run_cli(capsys, "leaderboard", "--results", str(sweep / "r"), "--format", "md", "--out", str(target))[0] == 0
    assert target.read_text().count("| cnn |") == 4, "without --run: every ε of the sweep, two rows each"


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("ARENA_REQUIRE_BROWSER"):
            pytest.fail("chromium is required here (ARENA_REQUIRE_BROWSER is set): apt-get install chromium")
        pytest.skip("no chromium on this machine; .ci/run installs Debian's chromium and requires this test")
    return found


#: Reports, after the page has laid out, how wide its content is: wider than the window means a horizontal scrollbar.
_WIDTH_PROBE = """<script>window.addEventListener("load", () => {
  const out = document.createElement("pre");
  out.id = "scroll-width";
  out.textContent = String(document.documentElement.scrollWidth);
  document.body.appendChild(out);
});</script>"""


def scroll_width(browser: str, page: Path, flags: list[str], window: str = "1280,900") -> int:
    """``document.documentElement.scrollWidth`` of ``page`` in a headless window of that size (a probe copy of the
    page is written beside it, so its pictures load as they would)."""
    probe = page.with_name("probe-" + page.name)
    probe.write_text(page.read_text(encoding="utf-8").replace("<head>", "<head>" + _WIDTH_PROBE, 1), encoding="utf-8")
    dom = subprocess.run([browser, *flags, f"--window-size={window}", "--virtual-time-budget=3000", "--dump-dom",
                          probe.as_uri()], capture_output=True, text=True, timeout=120).stdout
    probe.unlink()
    found = re.search(r'<pre id="scroll-width">(\d+)</pre>', dom)
    assert found, dom[-2000:]
    return int(found.group(1))


def _flagged_copy(sweep: Path, folder: Path) -> tuple[Path, str]:
    """A copy of the sweep's store in which, at the smaller ε, the transfer attack on JPEG broke one more sample that
    the white-box attack missed: its row then carries a flag whatever the trained weights were."""
    shutil.copytree(sweep / "r", folder, ignore=shutil.ignore_patterns("reports"))
    small = min(Store(folder, readonly=True).runs(), key=lambda r: r.threat.eps)
    db = sqlite3.connect(folder / "arena.db")
    query = "SELECT robust_correct FROM matchups WHERE run_id = ? AND defense = 'art.jpeg' AND attack = ?"
    white, transfer = (np.frombuffer(db.execute(query, (small.id, a)).fetchone()[0], np.uint8).copy()
                       for a in ("fgsm", "fgsm_t"))
    transfer[np.flatnonzero(white & transfer)[0]] = 0
    db.execute("UPDATE matchups SET robust_correct = ?, robust_accuracy = ? WHERE run_id = ? AND defense = "
               "'art.jpeg' AND attack = 'fgsm_t'", (transfer.tobytes(), float(transfer.mean()), small.id))
    db.commit()
    db.close()
    return folder, small.id


def test_html_page_renders_in_headless_chromium(sweep, tmp_path, capsys):
    browser = _chromium()
    results, small = _flagged_copy(sweep, tmp_path / "r")
    assert run_cli(capsys, "report", small, "--results", str(results), "--out", str(tmp_path / "page"))[0] == 0
    page = tmp_path / "page" / "leaderboard.html"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", f"--user-data-dir={tmp_path}/p"]
    dom = subprocess.run([browser, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    parser = _Cells()
    parser.feed(dom)
    assert parser.rows[0][:4] == ["rank", "model", "defense", "clean"] and len(parser.rows) == 3
    assert dom.count("<img") == 3
    assert '<details class="flags">' in dom, "the transfer attack's flags sit folded under their row"
    assert scroll_width(browser, page, flags) <= 1280, "no horizontal scrollbar at 1280 px"
    shot = tmp_path / "shot.png"
    subprocess.run([browser, *flags, f"--screenshot={shot}", "--window-size=1280,1600", page.as_uri()],
                   capture_output=True, timeout=120)
    pixels = matplotlib.image.imread(shot)
    assert pixels.std() > 0.05, "the page rendered blank"


def test_a_run_shows_one_overall_bar_with_each_matchup_above_it(sweep, tmp_path):
    """The sweep again, on a copy of its store: every matchup is reused, and the one bar counts all 8 of both runs
    (no bar per matchup), each matchup's line printed above it."""
    shutil.copytree(sweep / "r", tmp_path / "r", ignore=shutil.ignore_patterns("reports"))
    done = subprocess.run([sys.executable, "-m", "arena", "run", str(sweep / "scenario.yaml"), "--results",
                           str(tmp_path / "r"), "--cache-dir", str(sweep / "cache"), "--no-report"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert re.search(r"matchups: 100%.* 8/8 \[", done.stderr), done.stderr[-2000:]
    assert done.stderr.count("reused from run") == 8 and " batch" not in done.stderr
    assert "linf ε=0.01" in done.stdout and "linf ε=0.1" in done.stdout


def test_default_tables_fit_120_columns_and_wide_shows_every_column(sweep, capsys, tmp_path):
    results, _ = _flagged_copy(sweep, tmp_path / "r")
    code, out, _ = run_cli(capsys, "leaderboard", "--results", str(results))
    assert code == 0 and max(map(len, out.splitlines())) <= 120
    assert out.count("cnn  ") >= 4 and "linf ε=0.01" in out and "linf ε=0.1" in out, "after a sweep: every ε"
    assert "evaluation" not in out and "⚑ cnn+art.jpeg" in out, "details left for --wide; flags listed under the table"
    code, wide, _ = run_cli(capsys, "leaderboard", "--results", str(results), "--wide")
    assert code == 0 and "evaluation" in wide and "passes/sample" in wide
    code, out, err = run_cli(capsys, "leaderboard", "--results", str(results), "--format", "csv")
    assert code == 0 and "showing run" in err and "--run ID" in err, "a format with one table says which ε it shows"


@pytest.mark.parametrize(("eps", "shown"), [(2 / 255, "2/255"), (8 / 255, "8/255"), (0.1, "0.1"), (0.5, "0.5"),
                                            (1e-5, "1e-05")])
def test_eps_is_shown_as_a_fraction_of_255_where_it_is_one(eps, shown):
    assert str(ThreatModel("linf", eps)) == f"linf ε={shown}"


def test_text_table_wraps_long_text_to_the_width_and_keeps_every_word():
    long = "pgd @ 20261207-052233-ab12cd, fgsm @ 20261207-052233-ab12cd, apgd-ce [fast] @ 20261207-052233-ff00aa"
    lines = text_table(["rank", "model", "achieved by", "clean"], [["1", "cnn", long, "45.0%"]] * 2,
                       [False, False, False, True], width=60)
    assert max(map(len, lines)) <= 60 and len(lines) > 3
    assert all(word in "".join(lines) for word in long.split()) and lines[1].endswith("45.0%")
    assert text_table(["a", "b"], [["x" * 200, "1"]], width=None)[1] == "x" * 200 + "  1", "unwrapped without width"


def test_backticks_become_code_after_escaping():
    assert str(code("declare `randomized = True` <b>")) == "declare <code>randomized = True</code> &lt;b&gt;"
    assert str(code("`<script>`")) == "<code>&lt;script&gt;</code>"


def test_equal_worst_cases_share_a_rank_and_list_by_clean_accuracy():
    table = rows([matchup("fgsm", (0,) * 8, clean=(1, 1, 0, 0, 0, 0, 0, 0), defense="low_clean"),
                  matchup("fgsm", (0,) * 8, defense="high_clean"),
                  matchup("fgsm", (1, 0, 0, 0, 0, 0, 0, 0), defense="robust")], RUN)
    assert [(r.defense, r.rank) for r in table] == [("robust", 1), ("high_clean", 2), ("low_clean", 2)]


def test_arena_report_writes_the_pictures_and_page_of_a_run(sweep, tmp_path, capsys):
    run_id = Store(sweep / "r").run().id
    code, out, _ = run_cli(capsys, "report", run_id, "--results", str(sweep / "r"), "--out", str(tmp_path / "report"))
    assert code == 0 and str(tmp_path / "report" / "leaderboard.html") in out
    for name in ("leaderboard.png", "robustness.png", "examples.png"):
        assert (tmp_path / "report" / name).stat().st_size > 1000, name
        assert f'src="{name}"' in (tmp_path / "report" / "leaderboard.html").read_text()
