"""The dependency checks CI runs, and the lock file they keep in sync (python .ci/deps.py --help).

- ``audit``: no installed package, and none that ``pip install -e .`` would install, older than the fix of an
  advisory in .ci/advisories.toml; ``pip check`` finds nothing but torchattacks' own requests pin (see pyproject.toml).
- ``lock``: write requirements.lock, the set pip resolves for ``.[test]`` plus torchattacks, one ``name==version`` each.
- ``check-lock``: the lock is in sync with pyproject.toml (pip, constrained by the lock, resolves exactly the lock's
  set, nothing missing, nothing extra) and none of its pins is below an advisory's fix.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
ADVISORIES = ROOT / ".ci" / "advisories.toml"
LOCK = ROOT / "requirements.lock"
#: Installed with --no-deps after the rest (its requests~=2.25.1 pin would hold every install at vulnerable releases).
NO_DEPS = "torchattacks>=3.5"
#: The one conflict pip check may report: that pin, as a newer requests, or as none at all (`pip install -e .` without
#: extras brings nothing that needs requests).
ALLOWED_CONFLICT = re.compile(r"torchattacks \S+ (has requirement requests~=2\.25\.1, but you have requests \S+|"
                              r"requires requests, which is not installed)\.?")
HEADER = """\
# Every package of a test install (.[test], then torchattacks with --no-deps), pinned; Linux x86-64, Python 3.11.
# Install exactly this set:  pip install --no-deps -r requirements.lock
#   && pip install --no-deps --force-reinstall robustbench==1.1.1 && pip install --no-deps -e .
# (RobustBench again last: the torchattacks wheel ships an old robustbench that overwrites its files.)
# Regenerate after changing dependencies:  python .ci/deps.py lock   (CI fails while it is out of sync)
"""


def _too_old(name: str, version: str, advisories: dict) -> str | None:
    """Why ``version`` of ``name`` is below an advisory's fix, else None."""
    entry = advisories.get(canonicalize_name(name))
    if entry is None:
        return None
    have, fixes = Version(version), [Version(f) for f in entry["fixed"]]
    same_line = [f for f in fixes if f.major == have.major]
    if (same_line and have >= same_line[0]) or have > max(fixes):
        return None
    wanted = same_line[0] if same_line else min(f for f in fixes if f > have)
    return f"{name} {version} is older than {wanted}, which fixes {', '.join(entry['advisories'])}"


def _advisories() -> dict:
    return {canonicalize_name(k): v for k, v in tomllib.loads(ADVISORIES.read_text()).items()}


def _pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, cwd=ROOT)


def audit() -> list[str]:
    """Problems of this environment: packages below an advisory's fix, and conflicts other than the allowed one."""
    advisories = _advisories()
    problems = [p for d in importlib.metadata.distributions()
                if (p := _too_old(d.metadata["Name"], d.version, advisories))]
    fresh = _resolve("-e", ".")  # what the README's first command would install today
    problems += [f"pip install -e . would install {p}" for n, v in fresh.items() if (p := _too_old(n, v, advisories))]
    check = _pip("check")
    lines = [line.strip() for line in check.stdout.splitlines()]
    problems += [f"pip check: {line}" for line in lines
                 if line and not ALLOWED_CONFLICT.fullmatch(line) and line != "No broken requirements found."]
    return problems


def _resolve(*args: str) -> dict[str, str]:
    """What pip would install into an empty environment, as {name: version}, without installing anything."""
    done = _pip("install", "--dry-run", "--ignore-installed", "--quiet", "--report", "-", *args)
    if done.returncode:
        raise SystemExit(f"pip could not resolve {' '.join(args)}:\n{done.stderr.strip()}")
    report = json.loads(done.stdout)
    return {item["metadata"]["name"]: item["metadata"]["version"] for item in report["install"]
            if canonicalize_name(item["metadata"]["name"]) != "adversarial-arena"}


def _read_lock() -> dict[str, str]:
    pins = [line.split("==") for line in LOCK.read_text().splitlines() if line and not line.startswith("#")]
    return {name: version for name, version in pins}


def lock() -> list[str]:
    pins = _resolve("-e", ".[test]") | _resolve("--no-deps", NO_DEPS)
    LOCK.write_text(HEADER + "".join(f"{n}=={v}\n" for n, v in sorted(pins.items(), key=lambda p: p[0].lower())))
    print(f"wrote {LOCK.name}: {len(pins)} packages")
    return []


def check_lock() -> list[str]:
    pinned = {canonicalize_name(n): v for n, v in _read_lock().items()}
    resolved = {canonicalize_name(n): v for n, v in _resolve("-c", str(LOCK), "-e", ".[test]").items()}
    torchattacks = pinned.pop("torchattacks", None)
    problems = [] if torchattacks else ["requirements.lock: no torchattacks pin"]
    problems += [f"requirements.lock: {n} is needed by pyproject.toml but not locked"
                 for n in resolved.keys() - pinned.keys()]
    problems += [f"requirements.lock: {n} is locked but nothing needs it" for n in pinned.keys() - resolved.keys()]
    advisories = _advisories()
    problems += [f"requirements.lock: {p}" for n, v in {**pinned, "torchattacks": torchattacks or "0"}.items()
                 if (p := _too_old(n, v, advisories))]
    return [*problems, *(["  (regenerate it: python .ci/deps.py lock)"] if problems else [])]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("audit", "lock", "check-lock"))
    command = parser.parse_args().command
    problems = {"audit": audit, "lock": lock, "check-lock": check_lock}[command]()
    for line in problems:
        print(f".ci/deps.py {command}: {line}", file=sys.stderr)
    if not problems and command != "lock":
        print(f".ci/deps.py {command}: ok")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
