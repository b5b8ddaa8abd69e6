"""`tsproxy proxy`: the errors a user or a unit can meet before it serves anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def proxy(tmp_path: Path, *args: str, env: dict[str, str] | None = None
          ) -> subprocess.CompletedProcess[str]:
    (tmp_path / "fgpu.conf").write_text("listen = 127.0.0.1:1080\n")
    return subprocess.run([sys.executable, "-m", "tsproxy", "proxy", *args], cwd=REPO,
                          env={"PYTHONPATH": str(REPO), "TSPROXY_CONF_DIR": str(tmp_path),
                               **(env or {})},
                          capture_output=True, text=True, timeout=30)


def test_without_a_socket_from_systemd(tmp_path: Path) -> None:
    done = proxy(tmp_path, "fgpu")
    assert done.returncode == 1
    assert done.stderr == ("tsproxy: proxy: expects one listening socket from systemd (run it "
                           "through tsproxy-socks@NAME.socket) or --listen IP:PORT\n")
    # Meant for another process: not ours either.
    done = proxy(tmp_path, "fgpu", env={"LISTEN_PID": "1", "LISTEN_FDS": "1"})
    assert done.returncode == 1 and "expects one listening socket" in done.stderr


def test_bad_listen_and_conf(tmp_path: Path) -> None:
    done = proxy(tmp_path, "fgpu", "--listen", "localhost:99")
    assert done.stderr == ('tsproxy: --listen: "localhost:99" is not IP:PORT '
                           "(IPv6 as [ADDR]:PORT)\n")
    done = proxy(tmp_path, "work", "--conf", str(tmp_path / "fgpu.conf"))
    assert done.stderr == f"tsproxy: --conf {tmp_path}/fgpu.conf is instance 'fgpu', not 'work'\n"
    done = proxy(tmp_path, "nosuch")
    assert done.returncode == 1 and "no instance 'nosuch'" in done.stderr
