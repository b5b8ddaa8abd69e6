"""The host's forwarding in a booted Debian 12 and 13: a host that did not route before tsproxy
routes nothing but the instances' egress while they run, and gets its settings back after;
a host that routed keeps routing as before.

Besides the gateway's uplink (gateway.py), the container gets two more links, each to a
namespace of its own with its own subnet and a default route via the container: "lan" and
"dmz", each with a whoami web server and an nft counter of every packet that reaches it
from the other. Nothing may get from one to the other unless the host routes for them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from gateway import HOST_TS_IP, INTERNET, UPLINK, bring_up_network, install, serve_whoami
from nspawn import Container, wait_for

pytestmark = pytest.mark.system

HEAL_WITHIN = 10.0
CONFS = {"fgpu.conf": f"listen = {HOST_TS_IP}:11080\n",
         "work.conf": f"listen = {HOST_TS_IP}:11081\n"}
# Each extra namespace: the container's side and the namespace's address (TEST-NET-1 and -3),
# and the other one.
SIDES = {"lan": ("192.0.2.1", "192.0.2.2", "dmz"), "dmz": ("203.0.113.1", "203.0.113.2", "lan")}
GUARD = "ip tsproxy-forward-guard"
SYSCTLS = ("cd /proc/sys/net/ipv4 && grep -H . ip_forward conf/*/forwarding "
           "conf/*/accept_redirects")


def add_sides(c: Container) -> None:
    for ns, (host, inside, _other) in SIDES.items():
        c.run(f"ip netns add {ns} && ip link add {ns}0 type veth peer name eth0 netns {ns} && "
              f"ip addr add {host}/24 dev {ns}0 && ip link set {ns}0 up && "
              f"ip -n {ns} addr add {inside}/24 dev eth0 && ip -n {ns} link set eth0 up && "
              f"ip -n {ns} link set lo up && ip -n {ns} route add default via {host}")
        serve_whoami(c, ns, inside)
    count_from_other_side(c)


def count_from_other_side(c: Container) -> None:
    """(Re)start each namespace's count of the packets that reach it from the other."""
    for ns, (_host, _inside, other) in SIDES.items():
        c.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=(
            "table inet seen\ndelete table inet seen\n"
            "table inet seen {\n chain input {\n  type filter hook input priority 0;\n"
            f"  ip saddr {SIDES[other][1]} counter\n }}\n}}\n"))


def packets_crossed(c: Container) -> int:
    total = 0
    for ns in SIDES:
        listing = json.loads(c.run(f"ip netns exec {ns} nft -j list table inet seen").stdout)
        total += sum(expr["counter"]["packets"] for item in listing["nftables"]
                     if "rule" in item for expr in item["rule"]["expr"] if "counter" in expr)
    return total


def crosses(c: Container) -> bool:
    """Whether either namespace's request reaches the other's web server, answered with the
    client's own address (the host routes between them, no NAT)."""
    answers = []
    for ns, (_host, inside, other) in SIDES.items():
        done = c.run(f"ip netns exec {ns} curl -sS -m 2 http://{SIDES[other][1]}:8080/",
                     check=False)
        answers.append(done.returncode == 0 and done.stdout == inside)
    return any(answers)


def nothing_crosses(c: Container) -> None:
    assert not crosses(c)
    assert packets_crossed(c) == 0


def assert_egress(c: Container, name: str) -> None:
    seen = c.run(f"ip netns exec ts-{name} curl -sS -m 5 http://{INTERNET}:8080/").stdout
    assert seen == UPLINK


def ip_forward(c: Container) -> str:
    return c.run("cat /proc/sys/net/ipv4/ip_forward").stdout.strip()


def guard(c: Container) -> str | None:
    done = c.run(f"nft list table {GUARD}", check=False)
    return done.stdout if done.returncode == 0 else None


def test_host_that_did_not_route_routes_only_the_instances(booted_debian: Container,
                                                           tailscale_deb: Path) -> None:
    c = booted_debian
    bring_up_network(c)
    install(c, tailscale_deb, CONFS)
    c.run("systemctl daemon-reload")
    add_sides(c)
    assert ip_forward(c) == "0"
    # The judge can fail: with forwarding on and no guard, lan and dmz reach each other.
    c.run("echo 1 >/proc/sys/net/ipv4/ip_forward")
    wait_for(lambda: crosses(c), what="lan and dmz reaching each other while forwarding is on")
    assert packets_crossed(c) > 0
    c.run("echo 0 >/proc/sys/net/ipv4/ip_forward")
    count_from_other_side(c)
    # A hardened host: redirects refused. Writing ip_forward resets that; stop gives it back.
    c.run("echo 0 >/proc/sys/net/ipv4/conf/all/accept_redirects")
    sysctls = c.run(SYSCTLS).stdout
    nothing_crosses(c)

    c.run("systemctl start tsproxy@fgpu")
    assert ip_forward(c) == "1"
    assert '"ts-fgpu"' in (guard(c) or "")
    assert_egress(c, "fgpu")
    nothing_crosses(c)
    # `tsproxy status` and the watchdog know the guard.
    row = json.loads(c.run("tsproxy status --json fgpu", check=False).stdout)[0]
    assert row["forwarding_guard"] is True

    # Two instances: the first to stop leaves forwarding and the guard to the other.
    c.run("systemctl start tsproxy@work")
    c.run("systemctl stop tsproxy@fgpu")
    assert ip_forward(c) == "1"
    listing = guard(c) or ""
    assert '"ts-work"' in listing and "ts-fgpu" not in listing
    assert_egress(c, "work")
    nothing_crosses(c)

    # `nft flush ruleset` takes the guard too: the watchdog has it back within seconds.
    invocation = c.run("systemctl show -P InvocationID tsproxy@work").stdout
    c.run("nft flush ruleset")
    wait_for(lambda: c.run("systemctl show -P InvocationID tsproxy@work").stdout != invocation
             and guard(c) is not None and c.run("systemctl is-active tsproxy@work",
                                                check=False).returncode == 0,
             timeout=HEAL_WITHIN, what="the guard rebuilt by tsproxy-watch@work")
    assert "nft table ip tsproxy-forward-guard is gone" in c.run(
        "journalctl -b -u tsproxy-watch@work --no-pager -o cat").stdout
    count_from_other_side(c)  # what crossed while there was no guard is not the question
    assert_egress(c, "work")
    nothing_crosses(c)

    c.run("systemctl stop tsproxy@work")
    assert ip_forward(c) == "0"
    assert guard(c) is None
    assert c.run(SYSCTLS).stdout == sysctls
    assert c.run("test -e /run/tsproxy/forwarding.json", check=False).returncode != 0
    nothing_crosses(c)


def test_host_that_routed_keeps_routing(booted_debian: Container, tailscale_deb: Path) -> None:
    c = booted_debian
    bring_up_network(c)
    install(c, tailscale_deb, CONFS)
    c.run("systemctl daemon-reload")
    add_sides(c)
    c.run("echo 1 >/proc/sys/net/ipv4/ip_forward")
    wait_for(lambda: crosses(c), what="lan and dmz reaching each other")
    sysctls = c.run(SYSCTLS).stdout

    c.run("systemctl start tsproxy@fgpu")
    assert guard(c) is None
    assert_egress(c, "fgpu")
    assert crosses(c)
    c.run("systemctl stop tsproxy@fgpu")
    assert ip_forward(c) == "1"
    assert c.run(SYSCTLS).stdout == sysctls
    assert crosses(c)
