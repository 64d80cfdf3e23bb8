"""The docs work as written: the plugin guide's code run as a new user would, every other block of the docs and the
README run, validated or parsed, and the site built in strict mode with a complete plugin reference."""

from __future__ import annotations

import argparse
import re
import runpy
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, run_cli

from arena.cli import parser
from arena.registry import AUTOLOAD_ENV, load_registry
from arena.scenario import find_scenario
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


# The documentation site: built in strict mode, its plugin reference complete, every code block of it and of the
# README run (Python), validated (scenario YAML) or parsed by the real command-line parsers (shell).

class _MkDocsLoader(yaml.SafeLoader):
    """Reads mkdocs.yml, whose ``!!python/name:`` tags name MkDocs' own functions, as plain data."""


_MkDocsLoader.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: None)


def site_pages() -> list[Path]:
    """The pages of the site's navigation, then the README."""
    nav = yaml.load((REPO / "mkdocs.yml").read_text(encoding="utf-8"), _MkDocsLoader)["nav"]

    def files(entries: list) -> list[str]:
        return [f for entry in entries for value in entry.values()
                for f in (files(value) if isinstance(value, list) else [value])]

    return [*(REPO / "docs" / name for name in files(nav)), REPO / "README.md"]


PAGES = site_pages()
BLOCK = re.compile(r"(?:<!-- (compiled only|run by (tests/[\w./]+))[^\n]*-->\n)?```(\w*)\n(.*?)```", re.S)
#: Shell commands shown but not run here: the install steps (CI runs the README's), servers, tools of their own.
SHOWN = ("pip", "python -m pip", "pytest", "mkdocs", "ray start", "sqlite3", "export")


class _Parsed(Exception):
    """Raised by the patched ``parse_args``: the command line parsed, stop before any work."""


def blocks() -> list[tuple[str, str, str | None, str]]:
    """Every fenced block of the site's pages and the README, outside the plugin guide (whose own test above runs
    it): page, language, marker, code. A page joins this test when it joins the site's navigation."""
    found = []
    for page in PAGES:
        if page.name == "writing-plugins.md":
            continue
        for match in BLOCK.finditer(page.read_text(encoding="utf-8")):
            marker = match[2] or match[1]
            found.append((page.name, match[3], marker, match[4]))
    return found


def commands(code: str) -> list[list[str]]:
    """A shell block's commands, split at ``&&``, each without comments, leading variable settings or ``time``."""
    found = []
    for line in code.splitlines():
        for part in line.split("&&"):
            words = shlex.split(part, comments=True)
            while words and (re.match(r"^\w+=", words[0]) or words[0] == "time"):
                words.pop(0)
            if words:
                found.append(words)
    return found


def parse_python_module(module: str, args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Run ``python -m module args`` only as far as its argument parser: bad options fail the test."""
    original = argparse.ArgumentParser.parse_args

    def parse_args(self, *a, **k):
        original(self, *a, **k)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_args)
    monkeypatch.setattr(sys, "argv", [module, *args])
    with pytest.raises(_Parsed):
        runpy.run_module(module, run_name="__main__", alter_sys=False)
    monkeypatch.undo()


@pytest.mark.parametrize("page, language, marker, code", blocks(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_code_block_of_the_docs_and_readme_runs(page, language, marker, code, tmp_path, capsys, monkeypatch):
    if marker and marker != "compiled only":
        assert (REPO / marker).is_file() and page in (REPO / marker).read_text(encoding="utf-8"), \
            f"{page}: the block says it is run by {marker}, which does not read {page}"
        return
    if language == "python":
        compiled = compile(code, page, "exec")
        if marker != "compiled only":
            monkeypatch.chdir(tmp_path)
            exec(compiled, {})
    elif language == "yaml":
        data = yaml.safe_load(code)
        if not {"name", "models"} <= set(data):  # a fragment: added to the quickstart, which must stay valid
            data = {**yaml.safe_load((REPO / "scenarios" / "quickstart.yaml").read_text()), **data}
        path = tmp_path / "scenario.yaml"
        path.write_text(yaml.safe_dump(data, allow_unicode=True))
        status, _, err = run_cli(capsys, "validate", str(path))
        assert status == 0, f"{page}: a YAML block does not validate: {err}"
    elif language == "bash":
        monkeypatch.chdir(REPO)
        for words in commands(code):
            line = " ".join(words)
            if words[0] == "arena":
                try:
                    args = parser().parse_args(words[1:])
                except SystemExit:
                    pytest.fail(f"{page}: `{line}` does not parse: {capsys.readouterr().err}")
                if args.command in ("run", "validate"):
                    assert find_scenario(args.scenario).is_file(), f"{page}: `{line}` names no scenario"
            elif words[:2] == ["python", "-m"] and words[2].split(".")[0] == "benchmarks":
                parse_python_module(words[2], words[3:], monkeypatch)
                monkeypatch.chdir(REPO)
            elif words[0] == "bash":
                assert (REPO / words[1]).is_file(), f"{page}: `{line}`: no such script"
            else:
                assert line.startswith(SHOWN), f"{page}: `{line}`: say how this command is checked"
    else:  # shown output, or a diagram the site draws
        assert language in ("text", "mermaid"), \
            f"{page}: a block in {language or 'no language'}: name it python, yaml, bash, text or mermaid"


def test_the_site_builds_in_strict_mode_with_every_built_in_plugin_and_parameter(tmp_path, monkeypatch):
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(REPO / "mkdocs.yml"),
                           "-d", str(site)], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    page = (site / "reference" / "index.html").read_text(encoding="utf-8")
    monkeypatch.setenv(AUTOLOAD_ENV, "1")
    built_in = list(load_registry())
    assert len(built_in) > 30
    for info in built_in:
        assert f"<code>{info.name}</code>" in page, f"the reference lacks {info.kind} {info.name}"
        for key, param in info.cls.params.items():
            assert param.help, f"{info.kind} {info.name}: parameter {key} has no help sentence"
            assert f"<code>{key}</code>" in page, f"the reference lacks {info.name}'s parameter {key}"
    for reporter in ("jsonl", "mlflow"):
        assert f"<code>{reporter}</code>" in page


def test_the_readme_is_a_front_door():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    lines = text.splitlines()
    assert len(lines) <= 250
    commands = [line for line in lines if line.startswith("python -m pip install")]
    assert len(commands) == 2 and lines.index(commands[0]) < 20, "the two commands come first"
    assert all(len(line) <= 120 for line in lines if line not in commands)
    assert not re.search(r"\bissue \d|[Cc]hanged by this run", text)
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
        assert (REPO / target).exists(), f"README links to {target}, which does not exist"
