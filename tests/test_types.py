"""The type checker passes over ``arena/`` (configured in pyproject.toml's ``[tool.mypy]``), so CI runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytest.importorskip("mypy", reason="mypy is in the test extra; the README's test command installs it")


def test_mypy_passes_over_the_core():
    done = subprocess.run([sys.executable, "-m", "mypy"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
