"""The command line's listing and read-only commands, and their errors."""

from __future__ import annotations

import json

from conftest import REPO, run_cli

from arena.catalog import plain
from arena.hookspecs import HOOKSPEC_VERSION
from arena.kinds import first_sentence
from arena.version import DISTRIBUTION


def test_plugins_lists_every_builtin_with_package_params_and_description(capsys):
    code, out, _ = run_cli(capsys, "plugins", "--json")
    listing = json.loads(out)
    assert code == 0 and listing["hookspec_version"] == HOOKSPEC_VERSION and listing["errors"] == []
    by_name = {(p["kind"], p["name"]): p for p in listing["plugins"]}
    pgd = by_name["attack", "pgd"]
    assert pgd["package"] == DISTRIBUTION and pgd["version"] and "torchattacks" in pgd["description"]
    assert pgd["params"]["steps"] == "int = 10, >= 1"
    assert {("model", "cnn"), ("model", "cnn_lstm"), ("dataset", "cifar10"), ("defense", "none")} <= set(by_name)
    assert {"jsonl", "mlflow"} <= {p["name"] for p in listing["plugins"] if p["kind"] == "reporter"}


def test_plugins_lists_every_kind_one_line_per_plugin_within_120_columns_and_parameters_when_verbose(capsys,
                                                                                                      registry):
    code, text, _ = run_cli(capsys, "plugins")
    lines = text.splitlines()
    assert code == 0 and max(map(len, lines)) <= 120
    assert "`" not in text, "docstring markup is shown as plain text"
    entries: dict[tuple[str, str], str] = {}  # by (kind, name): a plugin's line and those a long sentence wraps onto
    kind, name = "", ""
    for line in filter(None, lines):
        if not line.startswith(" "):
            kind = line.removesuffix("s")
        elif not line.startswith("   "):
            name = line.split()[0]
            entries[kind, name] = " ".join(line.split()[1:])
        else:
            entries[kind, name] += " " + line.strip()
    assert len(entries) == len(list(registry)) + len(registry.reporters()), "one entry per plugin"
    assert {kind for kind, _ in entries} == {info.kind for info in registry} | {"reporter"}, "every kind"
    assert len(lines) < 2 * len(entries), "a line per plugin; only a long first sentence goes on a second"
    for info in registry:
        sentence = " ".join(plain(info.cls.description()).split())
        assert entries[info.kind, info.name] == sentence, "the first sentence, never cut"
    assert entries["attack", "pgd"] == "Projected gradient descent (Madry et al., 2018), torchattacks' PGD / PGDL2."
    assert entries["reporter", "jsonl"].startswith("The built-in reporter") and "random_start" not in text
    code, verbose, _ = run_cli(capsys, "plugins", "--verbose")
    assert code == 0 and "random_start: bool = True" in verbose and max(map(len, verbose.splitlines())) <= 120


def test_a_docstring_first_sentence_spans_lines_and_keeps_abbreviations():
    doc = """Fast gradient sign method (Goodfellow et al. 2015), e.g. one step; the L2 form
    steps along the ``unit-norm`` gradient. More detail.

    A second paragraph."""
    assert first_sentence(doc) == ("Fast gradient sign method (Goodfellow et al. 2015), e.g. one step; the L2 form "
                                   "steps along the ``unit-norm`` gradient.")
    assert plain(first_sentence(doc)).endswith("the unit-norm gradient.") and plain(":class:`arena.Attack`") == \
        "arena.Attack"


def test_plugins_from_a_module_are_listed(capsys):
    code, out, _ = run_cli(capsys, "plugins", "--json", "-p", "arena_test_plugins")
    cheat = next(p for p in json.loads(out)["plugins"] if p["name"] == "cheat")
    assert cheat["provider"] == "arena_test_plugins" and cheat["package"] is None


def test_leaderboard_without_results_says_what_to_do(tmp_path, capsys):
    code, out, err = run_cli(capsys, "leaderboard", "--results", str(tmp_path / "none"))
    assert code == 2 and "no results store" in err and "arena run SCENARIO" in err
    assert not (tmp_path / "none").exists()


def test_an_empty_store_is_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "arena.db").touch()  # a file with no tables, as an interrupted copy or `touch` leaves it
    for command in ("report", "leaderboard", "examples"):
        extra = ["--out", str(tmp_path / "x")] if command == "examples" else []
        code, _, err = run_cli(capsys, command, "--results", str(tmp_path), *extra)
        assert code == 2 and err.count("\n") == 1 and "holds no arena results (no runs table)" in err, err


def test_bundled_scenarios_are_listed_and_run_by_name_from_any_folder(tmp_path, capsys, monkeypatch):
    from arena.scenario import bundled

    monkeypatch.chdir(tmp_path)
    code, out, _ = run_cli(capsys, "scenarios")
    lines = out.splitlines()
    assert code == 0 and len(lines) == len(bundled()) >= 4
    assert any(line.startswith("linf_0.1 ") and "Seed study" in line for line in lines)
    for name in ("linf_0.1", "quickstart.yaml", str(REPO / "scenarios" / "quickstart.yaml")):
        code, out, err = run_cli(capsys, "validate", name)
        assert code == 0 and ": valid;" in out, err
    code, _, err = run_cli(capsys, "validate", "linf_01")
    assert code == 2 and "scenario file not found; bundled scenarios, runnable by name: " in err
    assert "linf_0.1" in err
