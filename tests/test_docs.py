"""The plugin guide works as written: its code blocks are copied into files and run as a new user would."""

from __future__ import annotations

import re

from conftest import REPO, run_cli

from arena.store import Store

GUIDE = (REPO / "docs" / "writing-plugins.md").read_text(encoding="utf-8")


def block(after: str, language: str) -> str:
    """The first fenced ``language`` block following the text ``after`` in the guide."""
    start = GUIDE.index(after)
    return re.search(rf"```{language}\n(.*?)```", GUIDE[start:], re.S)[1]


def test_the_guide_plugins_work_on_the_first_attempt(tmp_path, capsys, monkeypatch):
    (tmp_path / "my_plugins.py").write_text(block("Save it as `my_plugins.py`", "python"))
    (tmp_path / "my_scenario.yaml").write_text(block("Save it as `my_scenario.yaml`", "yaml"))
    monkeypatch.chdir(tmp_path)
    assert run_cli(capsys, "validate", "my_scenario.yaml")[0] == 0
    monkeypatch.syspath_prepend(str(tmp_path))
    code, out, _ = run_cli(capsys, "plugins", "-p", "my_plugins")
    assert code == 0 and all(name in out for name in ("bim", "bit_depth", "noise_training", "tiny_net"))
    code, out, err = run_cli(capsys, "run", "my_scenario.yaml", "-q", "--no-report")
    assert code == 0, err
    assert out.count("[my_plugins] ") == 12, "the guide's reporter hook saw every matchup"
    store = Store(tmp_path / "arena-results")
    found = {(m.defense, m.attack): m for m in store.matchups(store.run().id)}
    assert found["bit_depth", "bim_naive"].robust_accuracy > found["bit_depth", "bim"].robust_accuracy
    assert "bim_naive: non-differentiable bit_depth attacked without BPDA" in out

    namespace: dict = {}
    exec(block("Use the arena itself", "python"), namespace)
    namespace["test_bim_is_at_least_as_strong_as_fgsm"](tmp_path / "again")
