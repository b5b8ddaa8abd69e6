"""ruff over the whole tree and mypy --strict over the shipped code, as tests.
The pinned linters live in a venv that tools/install-deps makes (`make test` runs it)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("TSPROXY_TEST_CACHE", "/var/cache/tsproxy-test")) / "lint-venv/bin"
SHIPPED = ["tsproxy", "tsproxy_generator", "units/render.py"]


def lint(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    if not (VENV / tool).exists():
        pytest.fail(f"{VENV / tool} is missing: run tools/install-deps")
    return subprocess.run([str(VENV / tool), *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def test_ruff() -> None:
    result = lint("ruff", "check", "--output-format", "concise", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict() -> None:
    result = lint("mypy", *SHIPPED)
    assert result.returncode == 0, result.stdout + result.stderr


def test_test_modules_have_unique_names() -> None:
    # The tiers have no __init__.py, so pytest imports each test file by its base name: two
    # files of one name in two tiers stop the whole run at collection.
    names: dict[str, list[str]] = {}
    for path in sorted((REPO / "tests").rglob("test_*.py")):
        names.setdefault(path.name, []).append(str(path.relative_to(REPO)))
    assert not {name: paths for name, paths in names.items() if len(paths) > 1}
