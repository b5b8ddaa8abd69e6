"""A changed conf taken by the running proxy (SIGHUP, what `systemctl reload tsproxy@NAME`
sends): new connections get the new rules while a tunnel already open keeps going; a change
that needs a restart is named and nothing of that conf is applied. OpenBSD nc holds the
long-lived tunnel, curl is the new client."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator

import pytest
from proxyhost import (
    ALICE,
    ECHO_PORT,
    GATEWAY_TS,
    HTTP_PORT,
    NAME,
    PROXY,
    PROXY_IP,
    STRANGER,
    TARGET4,
    VETH_SUBNET,
    ProxyWorld,
)

pytestmark = pytest.mark.netns

FORWARD = 15080
BEFORE = (f"allow_clients = {ALICE}/32, {STRANGER}/32\n"
          f"forward = {FORWARD}={TARGET4}:{HTTP_PORT}\n")
AFTER = (f"allow_clients = {ALICE}/32\nmax_connections = 500\n"
         f"forward = {FORWARD}={TARGET4}:{ECHO_PORT}\n")


@pytest.fixture
def world(world: ProxyWorld) -> Iterator[ProxyWorld]:
    world.start_proxy(BEFORE, forwards=(f"{FORWARD}/tcp",))
    yield world
    world.stop_proxy()


def write_conf(world: ProxyWorld, text: str) -> None:
    (world.fake.conf_dir / f"{NAME}.conf").write_text(
        f"listen = {PROXY}\nveth_subnet = {VETH_SUBNET}\n{text}")


def reload(world: ProxyWorld, count: int) -> dict[str, object]:
    """SIGHUP, then the verdict file once the proxy has written its `count`th line."""
    world.fake.run("kill", "-HUP", str(world.proxy_pid()))
    world.wait_log(r"fgpu: conf (not )?reloaded", count=count)
    return dict(json.loads((world.stats_path.parent / "reload.json").read_text()))


def from_stranger(world: ProxyWorld) -> int:
    return world.client("curl", "-sS", "--max-time", "5", "--interface", STRANGER, "-x",
                        f"socks5://{PROXY}", f"http://{TARGET4}:{HTTP_PORT}/").returncode


def test_new_rules_for_new_connections_open_tunnels_go_on(world: ProxyWorld) -> None:
    tunnel = world.background("nc", "-N", "-X", "5", "-x", PROXY, TARGET4, str(ECHO_PORT))
    assert tunnel.stdin is not None and tunnel.stdout is not None
    try:
        tunnel.stdin.write("before\n")
        tunnel.stdin.flush()
        assert tunnel.stdout.readline() == "before\n"
        assert from_stranger(world) == 0

        write_conf(world, AFTER)
        verdict = reload(world, 1)
        assert verdict["applied"] is True
        assert verdict["line"] == "conf reloaded: allow_clients, max_connections, forward changed"
        # The tunnel opened before the reload carries on.
        tunnel.stdin.write("after\n")
        tunnel.stdin.flush()
        assert tunnel.stdout.readline() == "after\n"
        # New connections: the stranger is refused, the forward leads to the new target.
        assert from_stranger(world) != 0
        world.wait_log(rf"client={STRANGER}:\d+ socks5 .*client address not in allow_clients")
        echoed = world.client("nc", "-N", "-w", "5", PROXY_IP, str(FORWARD), input="ping\n")
        assert echoed.stdout == "ping\n", echoed.stderr
    finally:
        tunnel.stdin.close()
        tunnel.wait(10)


def test_a_change_that_needs_a_restart_applies_nothing(world: ProxyWorld) -> None:
    write_conf(world, AFTER.replace("max_connections = 500", "suffix = gpu"))
    verdict = reload(world, 1)
    assert verdict == {**verdict, "applied": False, "line": (
        "conf not reloaded: suffix changed, which takes systemctl restart tsproxy@fgpu; "
        "nothing else was applied")}
    assert from_stranger(world) == 0  # allow_clients changed too, and was not applied
    # A bad conf: kept as it was, and the line names the file and the key.
    write_conf(world, BEFORE + "max_connections = lots\n")
    verdict = reload(world, 2)
    assert verdict["applied"] is False
    assert str(verdict["line"]).startswith("conf not reloaded, keeping the old one: ")
    assert str(verdict["line"]).endswith('fgpu.conf: max_connections: "lots" is not an integer')
    assert world.curl("-x", f"socks5://{PROXY}", f"http://{TARGET4}:{HTTP_PORT}/").stdout \
        .count(GATEWAY_TS) == 1
    # SIGTERM goes to the whole group (the nsenter and timeout wrappers die of it too): the
    # proxy's own word is its log line.
    world.stop_proxy(signal.SIGTERM)
    world.wait_log(r"^fgpu: stopped$")
