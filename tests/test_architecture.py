"""The architecture page matches the code: every module it names exists, and every module of ``arena/`` is named."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_architecture_page_names_every_module_and_only_real_ones():
    page = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    named = set(re.findall(r"arena/[a-z_]+\.py", page))
    modules = {f"arena/{path.name}" for path in (REPO / "arena").glob("*.py")}
    assert not named - modules, f"docs/architecture.md names modules that do not exist: {sorted(named - modules)}"
    assert not modules - named, f"docs/architecture.md has no line for {sorted(modules - named)}; add one"
