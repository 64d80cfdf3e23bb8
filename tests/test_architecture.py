"""The architecture page matches the code (every module it names exists, every module of ``arena/`` is named) and
the core keeps its size limits."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_architecture_page_names_every_module_and_only_real_ones():
    page = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    named = set(re.findall(r"arena/[a-z_]+\.py", page))
    modules = {f"arena/{path.name}" for path in (REPO / "arena").glob("*.py")}
    assert not named - modules, f"docs/architecture.md names modules that do not exist: {sorted(named - modules)}"
    assert not modules - named, f"docs/architecture.md has no line for {sorted(modules - named)}; add one"


def test_no_module_of_the_core_over_400_lines_and_no_class_over_250():
    """One concept per module: a module or class past these sizes holds more than one and is split."""
    for path in sorted((REPO / "arena").glob("*.py")):
        text = path.read_text(encoding="utf-8")
        assert len(text.splitlines()) <= 400, f"{path.name}: {len(text.splitlines())} lines"
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef):
                size = node.end_lineno - node.lineno + 1
                assert size <= 250, f"{path.name}: class {node.name} is {size} lines"
