"""The host's forwarding under `tsproxy up`/`down`: on for the instances only, and given back.

The fake host (fakehost.py) starts with ip_forward 0, like a fresh network namespace. Its two
"internets" get routes to each other through it, so a packet from inet-a to inet-b's whoami
is exactly the traffic a host that does not route must not start carrying.
"""

from __future__ import annotations

import json

import pytest
from fakehost import FORWARDING, UPLINKS, FakeHost

pytestmark = pytest.mark.netns

SUBNETS = {"a": "10.200.3.4/30", "b": "10.200.7.8/30", "c": "10.200.11.12/30",
           "d": "10.200.15.16/30"}
INTERNET_A, INTERNET_B = UPLINKS["a"][1], UPLINKS["b"][1]
UPLINK_A, UPLINK_B = UPLINKS["a"][0], UPLINKS["b"][0]
GUARD = ("ip", "tsproxy-forward-guard")


@pytest.fixture
def routed(host: FakeHost) -> FakeHost:
    """inet-a and inet-b each route the other's network through the fake host."""
    host.sh(f"ip -n inet-a route add {INTERNET_B}/32 via {UPLINK_A};"
            f"ip -n inet-b route add {INTERNET_A}/32 via {UPLINK_B}")
    for port, (name, subnet) in enumerate(SUBNETS.items(), 1080):
        host.add_instance(name, subnet, port)
    return host


def up(host: FakeHost, *names: str) -> None:
    for name in names:
        done = host.tsproxy("up", name)
        assert (done.returncode, done.stderr) == (0, ""), done.stderr


def down(host: FakeHost, *names: str) -> None:
    for name in names:
        done = host.tsproxy("down", name)
        assert (done.returncode, done.stderr) == (0, ""), done.stderr


def crosses(host: FakeHost) -> bool:
    """Whether inet-a reaches inet-b's whoami through the fake host (it sees inet-a's own
    address: no NAT on that path)."""
    done = host.curl("inet-a", INTERNET_B, timeout=1)
    assert done.returncode == 0 or done.stdout == "", done.stdout
    return done.returncode == 0 and done.stdout.strip() == INTERNET_A


def guard_veths(host: FakeHost) -> list[list[str]] | None:
    """The veth names in the guard's two accept rules, None when there is no guard."""
    done = host.run("nft", "-j", "list", "table", *GUARD, check=False)
    if done.returncode != 0:
        return None
    rules = [item["rule"] for item in json.loads(done.stdout)["nftables"] if "rule" in item]
    # nft prints a set of one as the plain name.
    names = [rule["expr"][0]["match"]["right"] for rule in rules[:2]]
    return [sorted(n["set"]) if isinstance(n, dict) else [n] for n in names]


def test_crossing_is_real(routed: FakeHost) -> None:
    # The judge can fail: with forwarding on and no guard, inet-a reaches inet-b.
    assert not crosses(routed)
    routed.sh("echo 1 >/proc/sys/net/ipv4/ip_forward")
    assert crosses(routed)


def test_host_that_did_not_forward_forwards_only_the_instances(routed: FakeHost) -> None:
    # A hardened host: redirects refused, which writing ip_forward would reset.
    routed.sh("echo 0 >/proc/sys/net/ipv4/conf/all/accept_redirects")
    before = routed.state()
    up(routed, "a")
    assert routed.read("/proc/sys/net/ipv4/ip_forward") == "1\n"
    assert guard_veths(routed) == [["ts-a"], ["ts-a"]]
    assert routed.source_seen("ts-a", INTERNET_B) == UPLINK_B
    assert not crosses(routed)
    up(routed, "b")
    assert routed.source_seen("ts-b", INTERNET_A) == UPLINK_A
    assert not crosses(routed)
    # The first to stop leaves forwarding and the guard to the other.
    down(routed, "a")
    assert routed.read("/proc/sys/net/ipv4/ip_forward") == "1\n"
    assert routed.source_seen("ts-b", INTERNET_B) == UPLINK_B
    assert not crosses(routed)
    down(routed, "b")
    assert routed.state() == before
    assert routed.sysctls()["conf/all/accept_redirects"] == "0"
    assert guard_veths(routed) is None
    assert not crosses(routed)


def test_host_that_forwarded_keeps_its_routing(routed: FakeHost) -> None:
    routed.sh("echo 1 >/proc/sys/net/ipv4/ip_forward")
    before = routed.state()
    up(routed, "a")
    assert guard_veths(routed) is None
    assert routed.source_seen("ts-a", INTERNET_B) == UPLINK_B
    assert crosses(routed)
    down(routed, "a")
    assert routed.state() == before
    assert routed.read("/proc/sys/net/ipv4/ip_forward") == "1\n"
    assert crosses(routed)


def test_guard_comes_back_with_the_next_change(routed: FakeHost) -> None:
    # `nft flush ruleset` takes the guard; the watchdog's restart (down, up) rebuilds it.
    up(routed, "a", "b")
    routed.run("nft", "flush", "ruleset")
    assert crosses(routed)
    down(routed, "a")
    assert not crosses(routed)
    up(routed, "a")
    assert guard_veths(routed) == [["ts-a", "ts-b"], ["ts-a", "ts-b"]]
    down(routed, "a", "b")
    assert routed.read("/proc/sys/net/ipv4/ip_forward") == "0\n"


def test_parallel_starts_and_stops_share_one_record(routed: FakeHost) -> None:
    before = routed.state()
    for command in ("up", "down"):
        runs = [routed.start_tsproxy(command, name) for name in SUBNETS]
        for run in runs:
            _, err = run.communicate(timeout=60)
            assert (run.returncode, err) == (0, "")
        if command == "up":
            record = json.loads(routed.read(FORWARDING))
            assert record["instances"] == sorted(SUBNETS)
            assert record["restore"]["ip_forward"] == "0"
            veths = [f"ts-{name}" for name in sorted(SUBNETS)]
            assert guard_veths(routed) == [veths, veths]
            assert not crosses(routed)
    assert routed.state() == before


def test_damaged_record_is_one_line(routed: FakeHost) -> None:
    up(routed, "a")
    routed.sh(f"echo '{{\"instances\": 3, \"restore\": null}}' >{FORWARDING}")
    done = routed.tsproxy("down", "a")
    assert done.returncode == 1
    assert done.stderr == (f"tsproxy: a: {FORWARDING}: not as tsproxy wrote it (instances: not a "
                           "list of names): stop every tsproxy@ instance, delete it and set "
                           "net.ipv4.ip_forward as the host needs it\n")
    # As it says: then the next start records the host afresh.
    routed.run("rm", FORWARDING)
    routed.sh("echo 0 >/proc/sys/net/ipv4/ip_forward")
    up(routed, "a")
    down(routed, "a")
    assert routed.read("/proc/sys/net/ipv4/ip_forward") == "0\n"
    assert guard_veths(routed) is None
