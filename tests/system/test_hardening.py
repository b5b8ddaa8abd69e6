"""The sandboxes of the shipped units, in a booted Debian 12 and 13: systemd's own exposure
score for each, the sandbox in force on the running processes, and the units still doing
their work inside it (test_package.py runs the whole path with them too)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from gateway import HOST_TS_IP, bring_up_network, dig, install
from nspawn import Container, wait_for

pytestmark = pytest.mark.system

# The hardening goal: <= 3.5 for the proxy and the DNS responder. tailscaled needs root's
# network powers; its bound keeps what its unit has from sliding back.
MAX_EXPOSURE = {"tsproxy-socks@fgpu.service": 3.5, "tsproxy-dns.service": 3.5,
                "tsproxy-tailscaled@fgpu.service": 3.5, "tsproxy-watch@fgpu.service": 3.5}

CAP_SYS_RESOURCE = 1 << 24
CAP_NET_ADMIN, CAP_NET_RAW = 1 << 12, 1 << 13


def exposure(container: Container, unit: str) -> float:
    out = container.run(["systemd-analyze", "security", "--no-pager", unit]).stdout
    match = re.search(rf"Overall exposure level for {re.escape(unit)}: (\d+\.\d+)", out)
    assert match, out
    return float(match.group(1))


def main_pid(container: Container, unit: str) -> str:
    pid = container.run(["systemctl", "show", "-P", "MainPID", unit]).stdout.strip()
    assert pid not in ("", "0"), unit
    return pid


def proc_status(container: Container, pid: str) -> dict[str, str]:
    text = container.run(f"cat /proc/{pid}/status").stdout
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def assert_sandboxed(container: Container, unit: str, capabilities: int) -> None:
    """The running process has exactly these capabilities, no new privileges, a read-only
    root, no /home and a /tmp of its own."""
    pid = main_pid(container, unit)
    status = proc_status(container, pid)
    # Within what the container itself may have (nspawn withholds CAP_SYS_RESOURCE).
    capabilities &= int(proc_status(container, "1")["CapBnd"], 16)
    assert int(status["CapBnd"], 16) == capabilities, (unit, status["CapBnd"])
    assert int(status["CapEff"], 16) & ~capabilities == 0, (unit, status["CapEff"])
    assert status["NoNewPrivs"].strip() == "1", unit
    root = container.run(f"findmnt -N {pid} -n -o OPTIONS /").stdout
    assert root.split(",")[0] == "ro", (unit, root)
    container.run("touch /tmp/host-tmp-file")
    seen = container.run(f"nsenter -t {pid} -m ls -A /tmp /home", check=False).stdout
    assert "host-tmp-file" not in seen, (unit, seen)


def test_units_are_sandboxed_and_still_work(booted_debian: Container, tailscale_deb: Path) -> None:
    c = booted_debian
    bring_up_network(c)
    install(c, tailscale_deb, {"fgpu.conf": f"listen = {HOST_TS_IP}:11080\n"})
    c.run("mkdir -p /home/alice && echo secret > /home/alice/file")
    c.run("systemctl daemon-reload && systemctl start tsproxy@fgpu")
    wait_for(lambda: c.run("test -S /run/tsproxy/fgpu/tailscaled.sock", check=False)
             .returncode == 0, what="tailscaled's socket")

    scores = {unit: exposure(c, unit) for unit in MAX_EXPOSURE}
    print("systemd-analyze security:", scores)  # shown with -s, and in a failure's report
    for unit, limit in MAX_EXPOSURE.items():
        assert scores[unit] <= limit, (unit, scores[unit])

    # Each unit at work inside its sandbox. The proxy: socket activation, a refusal by
    # policy (REP 2) and one by the namespace's routes (REP 3, read over netlink).
    proxy = f"socks5h://{HOST_TS_IP}:11080"
    rebind = c.run(f"curl -sS -m 10 -x {proxy} http://127.0.0.1.fgpu/", check=False)
    assert rebind.returncode == 97 and "(2)" in rebind.stderr, rebind.stderr
    egress = c.run(f"curl -sS -m 10 -x {proxy} http://198.51.100.1:8080/", check=False)
    assert egress.returncode == 97 and "(3)" in egress.stderr, egress.stderr
    # Its counters still land in its RuntimeDirectory, readable for `tsproxy status`.
    wait_for(lambda: '"total": 2' in c.run("cat /run/tsproxy-socks/fgpu/stats.json",
                                           check=False).stdout, what="the proxy's counters")
    # The DNS responder: an IP-embedded name (no daemon asked) and a peer name (asks fgpu's
    # tailscaled over its LocalAPI: NeedsLogin, so SERVFAIL, not a timeout or REFUSED).
    assert dig(c, "+short", "10.1.2.3.fgpu").split() == ["10.1.2.3"]
    assert "status: SERVFAIL" in dig(c, "web.fgpu")
    # tailscaled: up in its namespace, its TUN made, answering its LocalAPI.
    state = c.run("tailscale --socket=/run/tsproxy/fgpu/tailscaled.sock status --json").stdout
    assert '"BackendState": "NeedsLogin"' in state, state
    c.run("ip -n ts-fgpu link show tailscale0")

    assert_sandboxed(c, "tsproxy-socks@fgpu.service", CAP_SYS_RESOURCE)
    assert_sandboxed(c, "tsproxy-dns.service", 0)
    assert_sandboxed(c, "tsproxy-tailscaled@fgpu.service", CAP_NET_ADMIN | CAP_NET_RAW)
    assert_sandboxed(c, "tsproxy-watch@fgpu.service", CAP_NET_ADMIN)
    # Nothing of the host's users' files, even for root.
    pid = main_pid(c, "tsproxy-socks@fgpu.service")
    assert c.run(f"nsenter -t {pid} -m cat /home/alice/file", check=False).returncode != 0
