"""Every command that takes an instance NAME refuses what no conf could be called, with one
line and exit 1, before touching anything: a name becomes interface, namespace, unit and path
names, so "../etc" must never act on the instance "etc"."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("command", ["up", "down", "login", "logout", "tailscale", "watch",
                                     "proxy", "client", "status", "doctor"])
@pytest.mark.parametrize("name", ["../etc", "Bad_Name", "fgpu.conf", "a" * 13])
def test_bad_names_are_refused(command: str, name: str, tmp_path: Path) -> None:
    (tmp_path / "etc.conf").write_text("listen = 100.121.76.21:11080\n")
    done = subprocess.run([sys.executable, "-m", "tsproxy", command, name], cwd=REPO,
                          env={"PYTHONPATH": str(REPO), "TSPROXY_CONF_DIR": str(tmp_path)},
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 1, done
    assert done.stderr == (f'tsproxy: instance name "{name}" must be 1-12 of a-z, 0-9 and -, '
                           "starting with a letter\n")
