"""Conditional suite members (``when:``): run where the arena's checks fire, skipped and recorded where none does,
never in the worst case; the ``fast`` suite's expansion; matchup keys of existing scenarios unchanged."""

from __future__ import annotations

import argparse
import json
import sqlite3
from dataclasses import replace

import numpy as np
import pytest
from conftest import matchup, play, run_cli, tiny, write_scenario

from arena import conditions, keys, matchups
from arena.formats import render
from arena.leaderboard import leaderboard_table, rows
from arena.registry import load_registry
from arena.scenario import ScenarioError, load_scenario
from arena.store import Store
from arena.tables import SCHEMA, SCHEMA_VERSION
from benchmarks import suite


@pytest.fixture(scope="module")
def test_registry():
    return load_registry(modules=["arena_test_plugins"])


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """One weights cache for the module: its scenarios train the same CNN, so it is trained once."""
    return tmp_path_factory.mktemp("weights")


def test_square_runs_where_a_check_fires_and_is_skipped_where_none_does(tmp_path, test_registry, weights):
    defenses = ["none", {"name": "art.jpeg", "quality": 50, "label": "jpeg"},
                {"name": "hidden_mask", "label": "hidden"}]
    # a small ε, so that PGD leaves samples for Square to cost passes on, whatever the machine's numerics
    scenario = tiny(attacks=["when_test"], defenses=defenses, dataset={"samples": 30, "train_samples": 2000},
                    batch_size=30, threat_model={"norm": "linf", "eps": "2/255"})
    store, run_id = play(tmp_path, test_registry, scenario, cache=weights)
    found = {(m.defense, m.attack): m for m in store.matchups(run_id)}
    plain, jpeg, hidden = (found[d, "when_test/square"] for d in ("none", "jpeg", "hidden"))
    assert plain.status == "skipped" and "none of its conditions (gradients)" in plain.detail
    assert (plain.forward_passes, plain.backward_passes, plain.robust_correct) == (0, 0, None)
    assert not plain.attacked_mask.any(), "a skipped member attacks no sample"
    assert jpeg.status == "ok" and found["jpeg", "when_test/pgd"].gradient["bpda"] == ["art.jpeg"]
    assert hidden.status == "ok" and found["hidden", "when_test/pgd"].checks["zero_gradient"] > 0
    assert jpeg.forward_passes > 0 and hidden.forward_passes > 0

    table = {r.defense: r for r in rows(store.matchups(run_id), store.run(run_id))}
    for defense, row in table.items():
        members = [m for m in store.matchups(run_id) if m.defense == defense]
        ran = [m for m in members if m.status == "ok"]
        assert row.worst_case == pytest.approx(np.logical_and.reduce([m.robust_correct for m in ran]).mean())
        assert row.passes == pytest.approx(sum(m.passes_per_sample for m in members)), "suite total = sum of members"
        assert row.rank is not None and row.suite == "when_test"
        assert not any("skipped" in flag for flag in row.flags)
    assert table["none"].attacks["when_test/square"] == "skipped"
    assert table["none"].attacks["when_test"] == table["none"].worst_case

    board = json.loads(render(leaderboard_table(store.run(run_id), list(table.values())), "json"))["rows"]
    assert {(r["defense"], r["suite"], r["passes/sample"]) for r in board} == {
        (d, "when_test", round(r.passes, 1)) for d, r in table.items()}


def test_the_cli_exits_0_on_skipped_members_and_a_rerun_reuses_them(tmp_path, test_registry, capsys, weights):
    scenario = tiny(attacks=["when_test"], dataset={"samples": 20, "train_samples": 2000}, batch_size=30,
                    plugins=["arena_test_plugins"])
    path = write_scenario(tmp_path, scenario)
    for _ in range(2):
        code, out, err = run_cli(capsys, "run", str(path), "--results", str(tmp_path / "r"), "--no-report",
                                 "--cache-dir", str(weights))
        assert code == 0, err
        assert "skipped" in out
    store = Store(tmp_path / "r", readonly=True)
    last = store.runs()[0]
    assert all(m.reused_from for m in store.matchups(last.id))


def test_conditions_read_checks_and_black_box_wins():
    sound = matchup("apgd", (1, 0, 1, 0, 1, 0, 0, 0), checks={"zero_gradient": 0, "checked": 6})
    assert conditions.reasons(["gradients", "black_box"], [sound]) == []
    zero = matchup("apgd", (1, 0, 1, 0, 1, 0, 0, 0), checks={"zero_gradient": 2, "checked": 6})
    assert "2 of 6 probed samples have a zero input gradient" in conditions.reasons(["gradients"], [zero])[0]
    assert conditions.reasons(["gradients"], [matchup("apgd", (1,) * 6 + (0, 0), randomized=["noise"])])
    boxed = matchup("apgd", (1, 0, 1, 0, 1, 0, 0, 0), checks={"unconstrained": {"checked": 10, "broken": 3}})
    assert "broke only 3 of 10" in conditions.reasons(["gradients"], [boxed])[0], "unconstrained attack failure"
    fab = matchup("fab_t", (1, 0, 1, 0, 1, 0, 0, 0), checks={"unconstrained": {"checked": 10, "broken": 9}})
    crossed = matchup("apgd", (1, 0, 1, 0, 1, 0, 0, 0), checks={"unconstrained": {"checked": 10, "broken": 10}})
    assert conditions.reasons(["gradients"], [crossed, fab]) == [], "the gradients carried an attack across the box"
    alone = conditions.reasons(["gradients"], [fab])
    assert alone and alone[0].startswith("fab_t: with an ε covering the whole box it broke only 9 of 10"), alone
    for box in ({"checked": 10, "broken": 10}, {"error": "refused"}):
        assert conditions.reasons(["gradients"], [matchup("apgd", (1,) * 6 + (0, 0), checks={"unconstrained": box})]) \
            == [], box
    probe = matchup("square_probe", (0, 0, 1, 0, 1, 0, 0, 0), attacked=(1, 0, 1, 0, 1, 0, 0, 0),
                    gradient_free=True)
    assert conditions.reasons(["black_box"], [sound, probe]) == ["square_probe broke 1 samples the gradient "
                                                                 "attacks missed"]
    assert conditions.reasons(["gradients"], [sound, probe]) == [], "a black-box win is not a gradient finding"


def test_the_fast_suite_expands_with_conditions(tmp_path, registry):
    scenario = load_scenario(write_scenario(tmp_path, tiny(attacks=[{"name": "fast", "targets": 2}])), registry)
    assert [(a.key, a.name, a.when) for a in scenario.attacks] == [
        ("fast/early_apgd_ce", "early_apgd_ce", []), ("fast/early_apgd_t", "early_apgd_t", []),
        ("fast/square_probe", "square", []), ("fast/fab_t", "fab_t", ["gradients", "black_box"]),
        ("fast/square", "square", ["gradients", "black_box"])]
    assert scenario.attacks[1].params["n_target_classes"] == 2 and scenario.attacks[1].params["ranking"] == "malt"
    assert scenario.attacks[3].params["n_target_classes"] == 1, "FAB-T on its first target class only"
    assert all(scenario.attacks[i].params["discard_after"] > 0 for i in (0, 1)), "both APGD members discard"
    with pytest.raises(ScenarioError, match=r"attacks\[0\]\.when\[0\]"):
        load_scenario(write_scenario(tmp_path, tiny(attacks=[{"name": "fgsm", "when": ["always"]}])), registry)


def test_keys_hash_when_only_for_conditional_entries(tmp_path, registry, monkeypatch):
    """Entries without ``when`` hash exactly the fields they hashed before it existed, so stores keep being reused."""
    hashed = []
    monkeypatch.setattr(keys, "content_key", lambda fields: hashed.append(fields) or str(len(hashed)))
    scenario = load_scenario(write_scenario(tmp_path, tiny(attacks=["fgsm", "fast"])), registry)
    arena = matchups.Arena(scenario, registry, tmp_path / "r")
    arena.threat = scenario.threat
    arena.networks.weights_key = lambda *refs: ("weights", {})
    arena.matchup_keys(None, scenario.models[0], scenario.defenses[0])
    # ``seeding``: every batch seeded on its own changed every result, so no key of the older seeding is reused
    legacy = {"weights", "model", "defense", "attack", "source", "adaptive", "threat", "eval", "batch_size", "seeding"}
    assert [set(f) - legacy for f in hashed] == [set(), set(), {"after"}, {"after"}, {"after", "when"},
                                                 {"after", "when"}]
    assert hashed[-1]["when"] == [["gradients", "black_box"], keys.CONDITIONS_CODE], "with the rules' code"


def test_an_older_store_learns_to_record_skipped_members(tmp_path):
    old = sqlite3.connect(tmp_path / "arena.db")
    old.executescript(SCHEMA.replace("'error', 'skipped')", "'error')"))
    old.execute("INSERT INTO runs (id, scenario, scenario_path, scenario_digest, scenario_text, arena_version, seed,"
                " norm, eps, dataset, samples, device, status, started_at) VALUES ('r', 's', 'p', 'd', 't', '0', 0,"
                " 'linf', 0.1, 'cifar10', 1, 'cpu', 'done', 'then')")
    old.execute("INSERT INTO matchups (id, run_id, model, defense, attack, params, key, status, samples, wall_time_s,"
                " finished_at) VALUES (41, 'r', 'm', 'd', 'a', '{}', 'k', 'ok', 1, 0, 'then')")
    old.execute("PRAGMA user_version = 6")
    old.commit()
    old.close()
    store = Store(tmp_path)  # schema 7 rebuilds the matchups table: SQLite cannot loosen a CHECK in place
    sql = store.db.execute("SELECT sql FROM sqlite_master WHERE name = 'matchups'").fetchone()[0]
    assert "'skipped'" in sql and store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert [tuple(r) for r in store.db.execute("SELECT id, key, status FROM matchups")] == [(41, "k", "ok")]
    assert store.db.execute("SELECT name FROM sqlite_master WHERE name = 'matchups_key'").fetchone()
    insert = ("INSERT INTO matchups (run_id, model, defense, attack, params, key, status, samples, wall_time_s,"
              " finished_at) VALUES ('r', 'm', 'd', ?, '{}', 'k', ?, 1, 0, 'now')")
    assert store.db.execute(insert, ("b", "skipped")).lastrowid == 42  # AUTOINCREMENT carries on past the old ids
    with pytest.raises(sqlite3.IntegrityError):
        store.db.execute(insert, ("c", "bogus"))


def test_the_suite_benchmark_prints_only_the_options_that_had_an_effect():
    args = argparse.Namespace(samples=200, models=["cnn", "cnn_pgd_at"], threats=[suite.threat("linf:8/255")],
                              l2_models=["cnn"], recipe="short", targets=3, probe_queries=100, threads=1, results=None)
    assert "--l2-models" not in suite.command(args) and "--threats linf:8/255 --recipe short" in suite.command(args)
    args.threats.append(suite.threat("l2:0.5"))
    assert "--threats linf:8/255,l2:0.5 --l2-models cnn --recipe" in suite.command(args)


def test_the_robust_benchmark_models_keep_their_full_recipe_under_the_short_one():
    args = argparse.Namespace(samples=10, recipe="short", targets=3, probe_queries=100)
    robust = suite.pair_scenario("cnn_robust", "linf", "8/255", args)
    assert robust["models"][0]["train"]["epochs"] == robust["defenses"][0]["epochs"] == 10
    assert "train_samples" not in robust["dataset"] and robust["defenses"][0]["eps"] == 8 / 255
    short = suite.pair_scenario("cnn_pgd_at", "linf", "8/255", args)
    assert short["models"][0]["train"]["epochs"] == 2 and short["dataset"]["train_samples"] == 5_000


def test_the_suite_benchmark_plays_l2_and_the_robust_models_only_where_asked():
    args = argparse.Namespace(models=["cnn", "cnn_pgd_at", "cnn_robust"], l2_models=["cnn", "cnn_robust"])
    assert suite.rows("linf", "8/255", args) == ["cnn", "cnn_pgd_at", "cnn_robust"]
    assert suite.rows("linf", 0.1, args) == ["cnn", "cnn_pgd_at"], "trained for 8/255, played only there"
    assert suite.rows("l2", 0.5, args) == ["cnn"]


def test_time_outside_the_attack_counts_a_member_left_nothing_to_attack_as_no_call():
    attacked = replace(matchup("a", (0,) * 8, attacked=(1,) * 8), wall_time_s=1.1, attack_time_s=1.0)
    idle = matchup("b", (0,) * 8, attacked=(0,) * 8)  # no sample left: never called, no attack time
    assert suite.outside([attacked, idle]) == f"{(1.1 + 1.0) / 1.0 - 1:.0%}"
    assert suite.outside([attacked, matchup("c", (0,) * 8, attacked=(1,) * 8)]) == "n/a", "a call not timed"
