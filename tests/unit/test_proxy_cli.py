"""`tsproxy proxy`: the errors a user or a unit can meet before it serves anything."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tsproxy.cli import proxy as cli_proxy
from tsproxy.errors import TsproxyError
from tsproxy_generator.config import load

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
    assert done.stderr == ("tsproxy: proxy: expects its listening socket from systemd (run it "
                           "through tsproxy-socks@NAME.socket) or --listen IP:PORT\n")
    # Meant for another process: not ours either.
    done = proxy(tmp_path, "fgpu", env={"LISTEN_PID": "1", "LISTEN_FDS": "1"})
    assert done.returncode == 1 and "expects its listening socket" in done.stderr


def test_bad_listen_and_conf(tmp_path: Path) -> None:
    done = proxy(tmp_path, "fgpu", "--listen", "localhost:99")
    assert done.stderr == ('tsproxy: --listen: "localhost:99" is not IP:PORT '
                           "(IPv6 as [ADDR]:PORT)\n")
    done = proxy(tmp_path, "work", "--conf", str(tmp_path / "fgpu.conf"))
    assert done.stderr == f"tsproxy: --conf {tmp_path}/fgpu.conf is instance 'fgpu', not 'work'\n"
    done = proxy(tmp_path, "nosuch")
    assert done.returncode == 1 and "no instance 'nosuch'" in done.stderr


def test_forward_sockets_from_systemd_are_told_apart(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The proxy's socket first, then UDP ASSOCIATE's (a datagram socket on the proxy's port)
    and the forwards' in any order, matched by port and type; a socket the conf does not know
    is one line (units older or newer than the conf)."""
    def bound(kind: socket.SocketKind, port: int = 0) -> socket.socket:
        sock = socket.socket(socket.AF_INET, kind)
        sock.bind(("127.0.0.1", port))
        if kind == socket.SOCK_STREAM:
            sock.listen()
        return sock

    proxy_, tcp, udp = (bound(socket.SOCK_STREAM), bound(socket.SOCK_STREAM),
                        bound(socket.SOCK_DGRAM))
    tcp_port, udp_port = tcp.getsockname()[1], udp.getsockname()[1]
    associate = bound(socket.SOCK_DGRAM, proxy_.getsockname()[1])
    (tmp_path / "fgpu.conf").write_text(
        f"listen = 127.0.0.1:{proxy_.getsockname()[1]}\n"
        f"forward = {udp_port}/udp=db:53, {tcp_port}=db:5432, 9/udp=db:9\n")
    conf = load(str(tmp_path / "fgpu.conf"))
    monkeypatch.setattr(cli_proxy, "inherited_sockets", lambda: [proxy_, udp, associate, tcp])
    lines: list[str] = []
    monkeypatch.setattr(cli_proxy, "log_line", lines.append)
    listener, udp_associate, forwards = cli_proxy.inherited(conf)
    assert (listener, udp_associate) == (proxy_, associate)
    assert [(sock, str(forward)) for sock, forward in forwards] == [
        (udp, f"{udp_port}/udp=db:53"), (tcp, f"{tcp_port}/tcp=db:5432")]
    assert lines == ["fgpu: forward 9/udp=db:9 has no socket yet: systemctl daemon-reload, "
                     "then systemctl restart tsproxy@fgpu"]
    (tmp_path / "fgpu.conf").write_text(f"listen = 127.0.0.1:{proxy_.getsockname()[1]}\n")
    with pytest.raises(TsproxyError) as caught:
        cli_proxy.inherited(load(str(tmp_path / "fgpu.conf")))
    assert str(caught.value) == (f"proxy: {tmp_path}/fgpu.conf has no forward for the socket on "
                                 f"{udp_port}: systemctl daemon-reload, then systemctl restart "
                                 "tsproxy@fgpu")
    for sock in (proxy_, tcp, udp, associate):
        sock.close()
