"""Forwards under real systemd (booted Debian 12 and 13): the generator puts each forward's
socket in tsproxy-socks@NAME.socket beside the proxy's, systemd hands them all to the proxy
inside the namespace, and curl (TCP) and OpenBSD nc (UDP) reach a simulated tailnet
(fake_tailnet.py) through them. A forward added later needs a daemon-reload and a restart,
as any socket change does."""

from __future__ import annotations

import subprocess
from pathlib import Path

import fake_tailnet
import pytest
from client_loops import in_netns
from gateway import HOST_TS_IP, bring_up_network, install
from nspawn import Container, wait_for
from test_package import backend_state

pytestmark = pytest.mark.system

UDP_PORT = 7007
UDP_ECHO = f"""import socket
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("{fake_tailnet.PEER}", {UDP_PORT}))
while True:
    data, peer = sock.recvfrom(65535)
    sock.sendto(b"echo " + data, peer)
"""
FORWARDS = (f"forward = 18080={fake_tailnet.PEER}:{fake_tailnet.PORT}, "
            f"17007/udp={fake_tailnet.PEER}:{UDP_PORT}\n")
CONF = f"listen = {HOST_TS_IP}:11080\n"


def client(c: Container, *argv: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """A client on the host's tailnet address's side: the container's own network namespace,
    with this machine's curl and nc."""
    return subprocess.run(in_netns(c.pid1, *argv), capture_output=True, text=True, timeout=30,
                          input=input, check=False)


def test_forwards_through_systemd_sockets(booted_debian: Container, tailscale_deb: Path) -> None:
    c = booted_debian
    bring_up_network(c)
    install(c, tailscale_deb, {"fgpu.conf": CONF + FORWARDS})
    c.write_file(*fake_tailnet.DROP_IN)
    c.run("systemctl daemon-reload && systemctl start tsproxy@fgpu")
    wait_for(lambda: backend_state(c, "fgpu") == "NeedsLogin", what="tailscaled of fgpu")
    fake_tailnet.attach(c, "fgpu")
    c.write_file("/root/udp_echo.py", UDP_ECHO)
    c.run("systemd-run --unit=tailnet-udp-echo -p NetworkNamespacePath=/run/netns/tailnet-fgpu "
          "/usr/bin/python3 /root/udp_echo.py")
    listens = c.run("systemctl show -P Listen tsproxy-socks@fgpu.socket").stdout
    # The proxy's own (TCP, and UDP for SOCKS5 UDP ASSOCIATE), then the forwards'.
    assert listens.split() == [f"{HOST_TS_IP}:11080", "(Stream)", f"{HOST_TS_IP}:11080",
                               "(Datagram)", f"{HOST_TS_IP}:18080", "(Stream)",
                               f"{HOST_TS_IP}:17007", "(Datagram)"], listens

    done = client(c, "curl", "-sS", "-m", "10", f"http://{HOST_TS_IP}:18080/")
    assert (done.returncode, done.stdout) == (0, "fgpu"), done.stderr + c.run(
        "journalctl -o cat -u tsproxy-socks@fgpu.socket -u tsproxy-socks@fgpu").stdout
    done = client(c, "nc", "-u", "-w", "3", HOST_TS_IP, "17007", input="ping\n")
    assert done.stdout == "echo ping\n", (done.returncode, done.stderr)
    journal = c.run("journalctl -o cat -u tsproxy-socks@fgpu.service").stdout
    assert f"forwarding {HOST_TS_IP}:17007/udp to {fake_tailnet.PEER}:{UDP_PORT}" in journal
    assert f" forward to={fake_tailnet.PEER}:{fake_tailnet.PORT} " in journal, journal
    assert "Traceback" not in journal
    assert "failed" not in c.run("journalctl -o cat -u tsproxy-socks@fgpu.socket").stdout

    # systemd holds the forwards' sockets: asked over D-Bus, it names the unit.
    held = c.run("python3 -c 'import ipaddress; from tsproxy import holders; "
                 "from tsproxy_generator.model import Listen; print(holders.socket_unit("
                 f"Listen(ipaddress.ip_address(\"{HOST_TS_IP}\"), 17007), \"udp\"))'").stdout
    assert held == "tsproxy-socks@fgpu.socket\n", held

    # What a Mac user connects to.
    snippet = c.run("tsproxy client --for forwards").stdout
    assert f"{HOST_TS_IP}:18080/tcp -> {fake_tailnet.PEER}:{fake_tailnet.PORT}" in snippet

    # systemctl reload: new rules for new connections, said in one line; a change that
    # needs a restart fails the reload and changes nothing.
    c.write_file("/etc/tsproxy.d/fgpu.conf", CONF + FORWARDS + "allow_clients = 10.9.9.9/32\n")
    reload = c.run("systemctl reload tsproxy@fgpu", check=False)
    journal = c.run("journalctl -o cat -u tsproxy@fgpu.service -u tsproxy-socks@fgpu").stdout
    assert reload.returncode == 0, reload.stderr + journal
    assert "fgpu: conf reloaded: allow_clients changed" in journal, journal
    done = client(c, "curl", "-sS", "-m", "5", f"http://{HOST_TS_IP}:18080/")
    assert done.returncode != 0 and done.stdout != "fgpu"
    c.write_file("/etc/tsproxy.d/fgpu.conf", CONF + FORWARDS + "suffix = gpu\n")
    reload = c.run("systemctl reload tsproxy@fgpu", check=False)
    assert reload.returncode != 0
    journal = c.run("journalctl -o cat -u tsproxy@fgpu.service").stdout
    assert ("fgpu: conf not reloaded: suffix changed, which takes systemctl restart "
            "tsproxy@fgpu; nothing else was applied") in journal, journal
    assert client(c, "curl", "-sS", "-m", "5", f"http://{HOST_TS_IP}:18080/").returncode != 0

    # A forward added later: its socket comes with the next daemon-reload and restart.
    c.write_file("/etc/tsproxy.d/fgpu.conf", CONF + FORWARDS.rstrip() +
                 f", 18081={fake_tailnet.PEER}:{fake_tailnet.PORT}\n")
    c.run("systemctl daemon-reload && systemctl restart tsproxy@fgpu")
    wait_for(lambda: backend_state(c, "fgpu") == "NeedsLogin", what="tailscaled of fgpu")
    # The restart made a new namespace: the simulated tailnet is attached to it afresh.
    c.run("systemctl stop tailnet-web-fgpu tailnet-udp-echo; ip netns del tailnet-fgpu")
    fake_tailnet.attach(c, "fgpu")
    wait_for(lambda: client(c, "curl", "-sS", "-m", "5",
                            f"http://{HOST_TS_IP}:18081/").stdout == "fgpu",
             what="the new forward")
