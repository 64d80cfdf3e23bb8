"""The standing board: two results folders from different "machines" merged into one board whose numbers match a
per-sample minimum computed here from the raw stores, a planted non-reproducible matchup flagged, RobustBench
model-info exported and read back, and the HTML site driven in real headless Chromium."""

from __future__ import annotations

import html
import json
import re
import shutil
import sqlite3
import subprocess
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from conftest import play, run_cli, tiny
from test_leaderboard import _chromium, scroll_width

from arena.interchange import export, read_reported
from arena.site import page
from arena.standing import Entry, Threat

DEFENSES = ["none", "art.jpeg"]
PGD = {"name": "pgd", "steps": 3}


@pytest.fixture(scope="module")
def machines(tmp_path_factory, registry) -> dict[str, Path]:
    """Folder A: FGSM and PGD-3. Folder B: the same PGD-3 (same matchup keys: the overlapping pair), PGD-6, and a
    run on fewer images. Same seed and weights cache, so the entries are the same weights. B's PGD-3 on the
    undefended model is then altered in one sample: the planted non-reproducible matchup."""
    root = tmp_path_factory.mktemp("machines")
    common = {"samples": 100, "train_samples": 2000}
    scenario = tiny(dataset={"name": "cifar10", "split": "test", **common}, defenses=DEFENSES,
                    threat_model={"norm": "linf", "eps": 0.01})
    for name, attacks in (("a", ["fgsm", PGD]), ("b", [PGD, {**PGD, "steps": 6, "label": "pgd6"}])):
        (root / name).mkdir()
        play(root / name, registry, {**scenario, "name": f"machine_{name}", "attacks": attacks},
             cache=root / "cache")[0].close()
    play(root / "b", registry, {**scenario, "name": "fewer", "attacks": ["fgsm"], "defenses": ["none"],
                                "dataset": {**scenario["dataset"], "samples": 40}}, cache=root / "cache")[0].close()
    db = sqlite3.connect(root / "b" / "results" / "arena.db")
    mid, clean, robust = db.execute("SELECT id, clean_correct, robust_correct FROM matchups WHERE attack = 'pgd'"
                                    " AND defense = 'none'").fetchone()
    planted = np.frombuffer(robust, np.uint8).copy()
    flip = int(np.flatnonzero(np.frombuffer(clean, np.uint8))[0])
    planted[flip] = 1 - planted[flip]
    db.execute("UPDATE matchups SET robust_correct = ?, robust_accuracy = ? WHERE id = ?",
               (planted.tobytes(), float(planted.mean()), mid))
    db.commit()
    db.close()
    return {"a": root / "a" / "results", "b": root / "b" / "results", "root": root}


def _independent(*dbs: Path) -> dict[tuple[str, str, int], tuple[float, float]]:
    """Per entry (weights key, defense, images): clean accuracy and the per-sample minimum over every valid matchup
    of every run, straight from the SQLite files."""
    masks: dict[tuple[str, str, int], list[np.ndarray]] = {}
    clean: dict[tuple[str, str, int], float] = {}
    for path in dbs:
        db = sqlite3.connect(path)
        for run_id, weights, samples in db.execute("SELECT id, weights, samples FROM runs"):
            weights = json.loads(weights)
            for model, defense, c, r in db.execute("SELECT model, defense, clean_correct, robust_correct FROM"
                                                   " matchups WHERE run_id = ? AND status = 'ok'", (run_id,)):
                key = (weights[f"{model}/{defense}"]["key"], defense, samples)
                masks.setdefault(key, []).append(np.frombuffer(r, np.uint8))
                clean[key] = float(np.frombuffer(c, np.uint8).mean())
        db.close()
    return {k: (clean[k], float(np.min(np.stack(v), axis=0).mean())) for k, v in masks.items()}


def _board(capsys, *args: str) -> list[dict]:
    code, out, err = run_cli(capsys, "board", "--format", "json", *args)
    assert code == 0, err
    return json.loads(out)


def _entries(board: list[dict]) -> dict[tuple[str, str, int], dict]:
    found = {}
    for table in board:
        for e in table["entries"]:
            if e["kind"] == "measured":
                found[(e["sources"][0]["weights_key"], e["defense"], e["samples"])] = e
    return found


def test_two_machines_merge_into_the_per_sample_minimum_and_flag_the_planted_failure(machines, capsys, tmp_path):
    expected = _independent(machines["a"] / "arena.db", machines["b"] / "arena.db")
    side_by_side = _entries(_board(capsys, "--results", str(machines["a"]), "--results", str(machines["b"])))
    merged_dir = tmp_path / "merged"
    shutil.copytree(machines["a"], merged_dir)
    code, out, err = run_cli(capsys, "merge", str(machines["b"]), "--results", str(merged_dir))
    assert code == 0 and "2 run(s) added" in out and "REPRODUCIBILITY: pgd: not reproducible" in err
    code, out, _ = run_cli(capsys, "merge", str(machines["b"] / "arena.db"), "--results", str(merged_dir))
    assert code == 0 and "0 run(s) added, 2 already here, 0 matchup(s) imported" in out, "merging twice adds nothing"
    assert sqlite3.connect(merged_dir / "arena.db").execute("SELECT count(*) FROM runs").fetchone()[0] == 3
    board = _board(capsys, "--results", str(merged_dir))
    merged = _entries(board)
    assert set(merged) == set(expected) == set(side_by_side) and len(merged) == 3
    for key, (clean, worst) in expected.items():
        assert merged[key]["worst_case"] == pytest.approx(worst, abs=1e-12), key
        assert merged[key]["clean_accuracy"] == pytest.approx(clean, abs=1e-12), key
        assert side_by_side[key]["worst_case"] == merged[key]["worst_case"], "merging changes no number"
    full = {k[1]: e for k, e in merged.items() if k[2] == 100}
    assert [len(e["sources"]) for e in full.values()] == [2, 2], "each entry has a run from both machines"
    assert {s["results"] for s in full["none"]["sources"]} == {str(merged_dir.resolve()),
                                                               str(machines["b"].resolve())}
    assert any("pgd: not reproducible" in f for f in full["none"]["flags"]), "the planted matchup is flagged"
    assert not any("not reproducible" in f for f in full["art.jpeg"]["flags"]), "the untouched overlap reproduces"
    for source in full["none"]["sources"]:
        for name in ("arena_version", "scenario_digest", "weights_key", "data_fingerprint", "device", "started_at"):
            assert source[name], name
        assert source["precision"] == "fp32" and source["seed"] == 0
    fewer = next(e for k, e in merged.items() if k[2] == 40)
    assert fewer["sample_set"] != full["none"]["sample_set"] and fewer["rank"] == 1
    assert any("on its own 40 images" in f for f in fewer["flags"]), "a different sample set is said, not mixed"
    assert sorted(e["rank"] for e in full.values()) == [1, 2]


def test_robustbench_export_round_trips_and_its_own_format_is_read(machines, capsys, tmp_path):
    results = ["--results", str(machines["a"]), "--results", str(machines["b"])]
    out = tmp_path / "model_info"
    code, text, _ = run_cli(capsys, "board", *results, "--format", "robustbench", "--out", str(out))
    assert code == 0 and "wrote 3 RobustBench model-info file(s)" in text
    files = sorted(out.glob("cifar10/Linf/*.json"))
    assert len(files) == 3
    for path in files:
        info = json.loads(path.read_text())
        assert {"name", "architecture", "clean_acc", "autoattack_acc", "eps", "number_forward_passes",
                "additional_data", "unreliable", "arena"} <= set(info)
    fixture = tmp_path / "rb" / "cifar10" / "Linf"
    fixture.mkdir(parents=True)
    (fixture / "Carmon2019Unlabeled.json").write_text(json.dumps({  # RobustBench's documented model-info fields
        "link": "https://arxiv.org/abs/1905.13736", "name": "Unlabeled Data Improves Adversarial Robustness",
        "authors": "Yair Carmon, Aditi Raghunathan, Ludwig Schmidt, Percy Liang, John C. Duchi",
        "additional_data": True, "number_forward_passes": 1, "dataset": "cifar10", "venue": "NeurIPS 2019",
        "architecture": "WideResNet-28-10", "eps": "8/255", "clean_acc": "89.69", "reported": "62.5",
        "autoattack_acc": "59.53"}))
    (fixture / "Flagged.json").write_text(json.dumps({
        "name": "Flagged", "dataset": "cifar10", "eps": "8/255", "clean_acc": "90.00", "autoattack_acc": "50.00",
        "external": "41.20", "unreliable": True, "architecture": "ResNet-18"}))
    board = _board(capsys, *results, "--reported", str(out), "--reported", str(tmp_path / "rb"))
    by_threat = {t["threat"]: t["entries"] for t in board}
    ours = by_threat["cifar10 linf ε=0.01"]
    measured = {(e["model"], e["defense"], e["samples"]): e for e in ours if e["kind"] == "measured"}
    reported = [e for e in ours if e["kind"] == "reported"]
    assert len(measured) == 3 and len(reported) == 3
    for e in reported:
        twin = measured[(*e["reported"]["name"].split("+"), e["samples"])]
        assert e["worst_case"] == pytest.approx(twin["worst_case"], abs=5e-5)
        assert e["clean_accuracy"] == pytest.approx(twin["clean_accuracy"], abs=5e-5)
        assert e["rank"] is None and "reported, not measured here" in e["flags"][0]
    unmixed = _entries([{"entries": [e for e in ours if e["kind"] == "measured"]}])
    assert unmixed == _entries(_board(capsys, *results)), "reported rows never change a measured number"
    robustbench = {e["model"]: e for e in by_threat["cifar10 linf ε=8/255"]}
    carmon = robustbench["Unlabeled Data Improves Adversarial Robustness (WideResNet-28-10)"]
    assert carmon["worst_case"] == pytest.approx(0.5953) and carmon["clean_accuracy"] == pytest.approx(0.8969)
    flagged = robustbench["Flagged (ResNet-18)"]
    assert flagged["worst_case"] == pytest.approx(0.412), "RobustBench ranks by external when present"
    assert "marked potentially unreliable by its source" in flagged["flags"]


def test_a_store_older_than_schema_6_is_read_and_its_unfingerprinted_samples_flagged(machines, capsys, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(machines["a"], old)
    db = sqlite3.connect(old / "arena.db")
    for column in ("data_fingerprint", "runtime", "origin"):
        db.execute(f"ALTER TABLE runs DROP COLUMN {column}")
    db.execute("PRAGMA user_version = 5")
    db.commit()
    db.close()
    before = (old / "arena.db").read_bytes()
    entries = _entries(_board(capsys, "--results", str(old)))
    assert (old / "arena.db").read_bytes() == before, "reading an older store migrates nothing"
    assert len(entries) == 2
    for e in entries.values():
        assert e["sources"][0]["data_fingerprint"] is None and e["sources"][0]["precision"] == "unrecorded"
        assert any("not fingerprinted" in f for f in e["flags"])
    fresh = _entries(_board(capsys, "--results", str(machines["a"])))
    assert {k: e["worst_case"] for k, e in entries.items()} == {k: e["worst_case"] for k, e in fresh.items()}


def test_export_writes_one_file_per_entry_even_when_one_model_is_on_several_eps(tmp_path):
    entries = [Entry(Threat.of("cifar10", "linf", eps), "cnn", "none", identity="k" * 40, samples=10,
                     sample_set="f" * 64, clean_accuracy=0.5, worst_case=eps) for eps in (2 / 255, 8 / 255, 0.1)]
    written = export({e.threat: [e] for e in entries}, tmp_path)
    assert len(set(written)) == 3 and {p.name.split("_")[1] for p in written} == {"eps2-255", "eps8-255", "eps0.1"}
    assert sorted(read_reported(p).worst_case for p in written) == pytest.approx([2 / 255, 8 / 255, 0.1], abs=5e-5)


@pytest.mark.parametrize("args, expected", [
    (["board", "--results", "{root}/nowhere"], "no results store at"),
    (["board", "--results", "{root}/notastore"], "not an arena results store"),
    (["board", "--results", "{a}", "--reported", "{root}/bad.json"], "bad.json: not valid JSON (line 1"),
    (["board", "--results", "{a}", "--reported", "{root}/nofields.json"], "missing field(s) name, dataset"),
    (["board", "--results", "{a}", "--format", "html"], "--format html writes a folder: pass --out FOLDER"),
    (["board", "--results", "{a}", "--format", "robustbench", "--out", "{root}/bad.json"], "cannot be written"),
    (["merge", "{root}/nowhere", "--results", "{a}"], "no results store at"),
    (["merge", "{a}", "--results", "{a}"], "is the --results store itself"),
])
def test_bad_input_is_one_clear_line_and_exit_2(machines, capsys, args, expected):
    root = machines["root"]
    (root / "notastore").mkdir(exist_ok=True)
    (root / "notastore" / "arena.db").write_text("not sqlite")
    (root / "bad.json").write_text("{oops")
    (root / "nofields.json").write_text("{}")
    code, _, err = run_cli(capsys, *(a.format(root=root, a=machines["a"]) for a in args))
    assert code == 2 and expected in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


_PROBE = """<script>
window.probeErrors = [];
window.addEventListener("error", e => window.probeErrors.push(String(e.message)));
const consoleError = console.error;
console.error = (...a) => { window.probeErrors.push(a.join(" ")); consoleError(...a); };
window.addEventListener("load", () => {
  const section = document.querySelector("section.threat");
  const header = name => Array.from(section.querySelectorAll("th")).find(h => h.textContent === name);
  const column = (name, visibleOnly) => {
    const index = Array.from(header(name).parentNode.children).indexOf(header(name));
    return Array.from(section.querySelectorAll("tbody tr.entry")).filter(r => !visibleOnly || !r.hidden)
      .map(r => r.cells[index].dataset.value ?? r.cells[index].textContent);
  };
  const result = {before: column("best known")};
  header("best known").click();
  result.ascending = column("best known");
  header("best known").click();
  result.descending = column("best known");
  const filter = document.getElementById("filter");
  filter.value = "jpeg";
  filter.dispatchEvent(new Event("input"));
  result.filtered = column("defense", true);
  filter.value = "no such entry";
  filter.dispatchEvent(new Event("input"));
  result.emptyShown = !section.querySelector(".empty").hidden;
  filter.value = "";
  filter.dispatchEvent(new Event("input"));
  result.errors = window.probeErrors;
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify(result);
  document.body.appendChild(out);
});
</script>"""


def test_html_site_sorts_filters_and_renders_in_headless_chromium(machines, capsys, tmp_path):
    browser = _chromium()
    site = tmp_path / "site"
    code, out, _ = run_cli(capsys, "board", "--results", str(machines["a"]), "--results", str(machines["b"]),
                           "--format", "html", "--out", str(site))
    assert code == 0 and "index.html" in out
    page = (site / "index.html").read_text()
    links = re.findall(r'href="(reports/[^"]+)"', page)
    assert len(set(links)) == 3 and all((site / link).is_file() for link in links), "each run's report is linked"
    assert "<script src" not in page and "<link" not in page and "http" not in page.split("<script>")[1], \
        "self-contained: nothing is fetched"
    probe = site / "probe.html"
    probe.write_text(page.replace("<head>", "<head>" + _PROBE, 1))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", f"--user-data-dir={tmp_path}/p",
             "--enable-logging=stderr", "--v=0"]
    done = subprocess.run([browser, *flags, "--virtual-time-budget=3000", "--dump-dom", probe.as_uri()],
                          capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout, re.S)
    assert found, done.stderr[-2000:]
    result = json.loads(html.unescape(found.group(1)))
    assert result["errors"] == [] and "Uncaught" not in done.stderr
    numbers = [float(v) for v in result["ascending"]]
    assert numbers == sorted(numbers) and [float(v) for v in result["descending"]] == sorted(numbers, reverse=True)
    assert sorted(result["before"]) == sorted(result["ascending"])
    assert result["filtered"] == ["art.jpeg"] and result["emptyShown"]
    assert scroll_width(browser, site / "index.html", flags) <= 1280, "no horizontal scrollbar at 1280 px"
    shot = tmp_path / "board.png"
    subprocess.run([browser, *flags, f"--screenshot={shot}", "--window-size=1280,900", (site / "index.html").as_uri()],
                   capture_output=True, timeout=120)
    assert matplotlib.image.imread(shot).std() > 0.05, "the page rendered blank"


def test_the_text_board_fits_120_columns(machines, capsys):
    code, out, _ = run_cli(capsys, "board", "--results", str(machines["a"]), "--results", str(machines["b"]))
    assert code == 0 and max(map(len, out.splitlines())) <= 120 and "⚑ cnn+none" in out
    code, wide, _ = run_cli(capsys, "board", "--results", str(machines["a"]), "--results", str(machines["b"]), "--wide")
    assert code == 0 and "passes/sample" in wide and "passes/sample" not in out


def test_entries_with_the_same_label_are_told_apart_by_a_weights_hash():
    threat = Threat.of("cifar10", "linf", 8 / 255)
    entries = [Entry(threat, "cnn", "none", identity="1234abcd5678:aa"), Entry(threat, "cnn", "none",
                                                                             identity="9876fedc5432:bb"),
               Entry(threat, "resnet", "none", identity="5555eeee:cc")]
    index = page({threat: entries}, ["r"])
    assert "weights 1234abcd" in index and "weights 9876fedc" in index and "weights 5555eeee" not in index
