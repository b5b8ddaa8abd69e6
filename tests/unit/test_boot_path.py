"""The generator runs at every boot and daemon-reload: it must stay import-light."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.generator.test_generator import private_copy

pytestmark = pytest.mark.unit

REPO = Path(__file__).parent.parent.parent
LAUNCHER = REPO / "lib/systemd/system-generators/tsproxy-generator"
CASE = REPO / "tests/generator/cases/02-several"
FORBIDDEN = ("jinja2", "asyncio", "pystemd", "dnslib", "tsproxy", "subprocess", "json")


def imported_modules(tmp_path: Path) -> set[str]:
    env = {"PYTHONPATH": str(REPO), "SYSTEMD_LOG_TARGET": "console",
           "TSPROXY_GENERATOR_ROOT": str(private_copy(CASE, tmp_path / "root"))}
    out = tmp_path / "out"
    out.mkdir()
    result = subprocess.run([sys.executable, "-X", "importtime", str(LAUNCHER), str(out)],
                            env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("import time:")]
    return {line.rsplit("|", 1)[1].strip() for line in lines[1:]}


def test_generator_never_imports_the_runtime(tmp_path: Path) -> None:
    modules = imported_modules(tmp_path)
    assert "tsproxy_generator.generator" in modules and "configobj" in modules
    top_level = {name.split(".")[0] for name in modules}
    assert not top_level & set(FORBIDDEN)


def test_runtime_imports_go_one_way() -> None:
    for path in (REPO / "tsproxy_generator").rglob("*.py"):
        text = path.read_text()
        assert "import tsproxy." not in text and "from tsproxy " not in text \
            and "from tsproxy." not in text, path
