"""A stopping proxy (SIGTERM, as systemd stops it for a restart on upgrade) drains: what is in
flight finishes within the grace period, what outlives it is cut, and it exits 0.

Here the proxy's listener comes from systemd-socket-activate, which keeps no copy: a new
connection after SIGTERM is refused. Under systemd the socket unit keeps its copy and the
connection waits in the backlog for the next proxy (tests/system/test_upgrade.py)."""

from __future__ import annotations

import time

import pytest
from proxyhost import HTTP_PORT, NAME, PROXY, TARGET4, ProxyWorld

from tsproxy.proxy.service import DRAIN_GRACE

pytestmark = pytest.mark.netns

SIZE = 48 << 20
RATE = "16M"  # bytes per second curl reads: the download takes about 3 s


def test_a_download_in_flight_finishes(world: ProxyWorld) -> None:
    world.start_proxy()
    download = world.background("curl", "-sS", "--max-time", "20", "--limit-rate", RATE,
                                "-x", f"socks5h://{PROXY}",
                                f"http://{TARGET4}:{HTTP_PORT}/bytes/{SIZE}",
                                "-o", "/dev/null", "-w", "%{size_download}")
    time.sleep(1)
    world.fake.run("kill", "-TERM", str(world.proxy_pid()))
    world.wait_log(f"{NAME}: stopping: no new connections; 1 open")
    refused = world.curl("-x", f"socks5h://{PROXY}", f"http://{TARGET4}:{HTTP_PORT}/")
    assert refused.returncode != 0  # nobody holds the listener here (see above)
    out, _ = download.communicate(timeout=30)
    assert download.returncode == 0 and out == str(SIZE)
    assert world.stop_proxy(None) == 0
    assert "cutting" not in world.log()
    assert world.stats()["ended"].get("closed", 0) >= 1
    world.start_proxy()


def test_a_tunnel_that_outlives_the_grace_is_cut(world: ProxyWorld) -> None:
    world.start_proxy()
    with world.hold(2) as replies:
        assert replies == ["0", "0"]
        started = time.monotonic()
        world.fake.run("kill", "-TERM", str(world.proxy_pid()))
        assert world.stop_proxy(None) == 0
        took = time.monotonic() - started
    assert DRAIN_GRACE - 0.5 < took < DRAIN_GRACE + 3, took
    world.wait_log(f"{NAME}: cutting 2 connection\\(s\\) still open after {DRAIN_GRACE:g} s")
    world.start_proxy()


def test_a_second_sigterm_cuts_at_once(world: ProxyWorld) -> None:
    world.start_proxy()
    with world.hold(1) as replies:
        assert replies == ["0"]
        pid = str(world.proxy_pid())
        started = time.monotonic()
        world.fake.run("kill", "-TERM", pid)
        world.wait_log(f"{NAME}: stopping: no new connections")
        world.fake.run("kill", "-TERM", pid)
        assert world.stop_proxy(None) == 0
        assert time.monotonic() - started < DRAIN_GRACE - 1
    world.start_proxy()
