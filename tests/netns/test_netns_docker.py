"""Hosts with Docker: its iptables-nft FORWARD chain drops by default."""

from __future__ import annotations

import shutil

import pytest
from fakehost import UPLINKS, FakeHost

pytestmark = pytest.mark.netns

# What iptables-nft makes of Docker's chains, reduced to what matters here.
DOCKER = """
table ip filter {
    chain DOCKER-USER {
        counter return
    }
    chain FORWARD {
        type filter hook forward priority 0; policy drop;
        jump DOCKER-USER
    }
}
"""


@pytest.fixture
def docker(host: FakeHost) -> FakeHost:
    host.add_instance("a", "10.200.3.4/30", 1080)
    host.run("nft", "-f", "-", input=DOCKER)
    return host


def test_egress_through_docker_forward_drop(docker: FakeHost) -> None:
    table = docker.state()["nft"]
    assert docker.tsproxy("up", "a").returncode == 0
    for uplink, internet, _prefix in UPLINKS.values():
        assert docker.source_seen("ts-a", internet) == uplink
    assert docker.tsproxy("up", "a").returncode == 0  # again: still two rules, not four
    ours = [line for line in _docker_user(docker) if 'comment "tsproxy-a"' in line]
    assert [line.split(" counter")[0] for line in ours] == ['oifname "ts-a"', 'iifname "ts-a"']
    assert docker.tsproxy("down", "a").returncode == 0
    assert docker.state()["nft"] == table


def test_docker_user_rules_stay_readable_by_iptables(docker: FakeHost) -> None:
    # Docker drives this table with iptables-nft, which refuses a chain holding nft
    # expressions it cannot translate back.
    if not shutil.which("iptables-nft"):
        pytest.skip("iptables-nft is not installed")
    assert docker.tsproxy("up", "a").returncode == 0
    listing = docker.run("iptables-nft", "-S", "DOCKER-USER").stdout
    assert "-A DOCKER-USER -i ts-a -m comment --comment tsproxy-a -j ACCEPT" in listing


def test_drop_policy_without_docker_user_is_a_warning(host: FakeHost) -> None:
    host.add_instance("a", "10.200.3.4/30", 1080)
    host.run("nft", "-f", "-", input="""
table inet firewall {
    chain forward {
        type filter hook forward priority 0; policy drop;
    }
}
""")
    done = host.tsproxy("up", "a")
    assert done.returncode == 0
    assert done.stderr.startswith("tsproxy: warning: a: forward chain 'inet firewall forward' "
                                  "has policy drop")
    assert done.stderr.count("\n") == 1


def test_filter_table_without_docker_user_is_left_alone(host: FakeHost) -> None:
    # iptables-nft without Docker: `ip filter` is there, DOCKER-USER is not, and neither
    # `up` nor `down` takes that for a failure or adds to the table.
    host.add_instance("a", "10.200.3.4/30", 1080)
    host.run("nft", "-f", "-", input="""
table ip filter {
    chain INPUT {
        type filter hook input priority 0; policy accept;
    }
}
""")
    before = host.state()
    for command in ("up", "down"):
        done = host.tsproxy(command, "a")
        assert (done.returncode, done.stderr) == (0, "")
    assert host.state() == before


def test_failed_up_leaves_docker_table_alone(docker: FakeHost) -> None:
    table = docker.state()["nft"]
    # resolv.conf cannot be written: up fails after its rules are in.
    docker.sh("mkdir -p /etc/netns && touch /etc/netns/ts-a")
    done = docker.tsproxy("up", "a")
    assert done.returncode == 1
    assert docker.state()["nft"] == table


def _docker_user(host: FakeHost) -> list[str]:
    return [line.strip() for line in
            host.run("nft", "list", "chain", "ip", "filter", "DOCKER-USER").stdout.splitlines()]
