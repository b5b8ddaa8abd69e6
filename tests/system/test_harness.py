"""The container harness itself: what later system tests rely on works here."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from nspawn import Container, wait_for

pytestmark = pytest.mark.system

# Addresses only ever used on a veth pair inside the container's own private
# network namespace: nothing here can reach the host's network.
VETH_HOST = "10.213.0.1"
VETH_NS = "10.213.0.2"


def test_systemd_is_pid1_and_running(booted_debian: Container) -> None:
    assert booted_debian.run(["cat", "/proc/1/comm"]).stdout.strip() == "systemd"
    state = booted_debian.run(["systemctl", "is-system-running"], check=False).stdout.strip()
    assert state == "running", f"failed units: {booted_debian.failed_units}"
    assert booted_debian.run(["hostname"]).stdout.strip() == "tsproxy-test"


RELEASES = {"bookworm": "12", "trixie": "13"}


def test_release_and_cgroups(booted_debian: Container, debian_suite: str) -> None:
    c = booted_debian
    os_release = dict(line.split("=", 1) for line in c.run(["cat", "/etc/os-release"]).stdout.splitlines()
                      if "=" in line)
    assert os_release["VERSION_CODENAME"] == debian_suite
    assert os_release["VERSION_ID"].strip('"') == RELEASES[debian_suite]
    assert c.run(["cat", "/etc/apt/sources.list"]).stdout.split()[2] == debian_suite
    if os.environ.get("SYSTEMD_NSPAWN_UNIFIED_HIERARCHY", "1") == "1":
        # cgroup v2 only, as on a real Debian 12/13 host, whatever this host runs.
        assert c.run(["stat", "-fc", "%T", "/sys/fs/cgroup"]).stdout.strip() == "cgroup2fs"
        assert "cgroupsv1" not in c.run(["systemctl", "show", "-P", "Tainted"]).stdout
    if c.cgroups:
        # A cgroup of its own on the host, not one shared with every other container.
        host_view = Path(f"/proc/{c.pid1}/cgroup").read_text()
        assert f"nspawn-{c.name}/payload/" in host_view, host_view


GENERATOR = """#!/bin/sh
# $1 is the normal-priority output directory.
cat > "$1/generated.service" <<UNIT
[Service]
Type=oneshot
ExecStart=/bin/sh -c 'echo yes > /run/generated-ran'
UNIT
"""


def test_generators_run_on_daemon_reload(booted_debian: Container) -> None:
    # tsproxy makes its units with a systemd generator: one must run on
    # daemon-reload, and the units it writes must start.
    c = booted_debian
    c.write_file("/etc/systemd/system-generators/test-generator", GENERATOR, mode=0o755)
    c.run(["systemctl", "daemon-reload"])
    c.run(["systemctl", "start", "generated.service"])
    assert c.run(["cat", "/run/generated-ran"]).stdout == "yes\n"


def test_netns_veth_and_tun(booted_debian: Container) -> None:
    c = booted_debian
    c.run("ip netns add x")
    c.run(f"ip link add veth0 type veth peer name veth1 netns x"
          f" && ip addr add {VETH_HOST}/30 dev veth0 && ip link set veth0 up"
          f" && ip -n x addr add {VETH_NS}/30 dev veth1 && ip -n x link set veth1 up && ip -n x link set lo up")
    # A unit in the netns through NetworkNamespacePath=, as tsproxy's units do.
    c.run(["systemd-run", "--unit=listener", "-p", "NetworkNamespacePath=/run/netns/x",
           "sh", "-c", f"nc -l {VETH_NS} 5555 > /srv/received"])
    wait_for(lambda: f"{VETH_NS}:5555" in c.run("ip netns exec x ss -ltnH").stdout, what="listener")
    c.run(f"nc -N -w 5 {VETH_NS} 5555", input="hello over veth\n")
    wait_for(lambda: c.run("cat /srv/received").stdout == "hello over veth\n", what="data over veth")
    # /dev/net/tun opens inside a netns, and a TUN device can be made there.
    c.run(["ip", "netns", "exec", "x", "python3", "-c", "import os; os.close(os.open('/dev/net/tun', os.O_RDWR))"])
    c.run("ip netns exec x ip tuntap add dev tun0 mode tun")
    assert "tun0" in c.run("ip -n x link show tun0").stdout


def test_tailscaled_runs_in_netns(booted_debian: Container, tailscale_deb: Path) -> None:
    c = booted_debian
    c.copy_in(tailscale_deb, f"/srv/{tailscale_deb.name}")
    c.run("cd /srv && apt-get install -y ./tailscale_*.deb")
    assert c.run(["dpkg-query", "-W", "-f=${Status}", "tailscale"]).stdout == "install ok installed"
    # Shipped but not enabled: a lab enables it explicitly.
    assert c.run(["systemctl", "is-enabled", "tailscaled.service"], check=False).stdout.strip() == "disabled"
    c.run("ip netns add x && ip -n x link set lo up")
    c.run(["systemd-run", "--unit=tstest", "-p", "NetworkNamespacePath=/run/netns/x",
           "/usr/sbin/tailscaled", "--statedir=/var/lib/tstest", "--socket=/run/tstest.sock",
           "--tun=tailscale0", "--no-logs-no-support"])

    wait_for(lambda: backend_state(c, "/run/tstest.sock") == "NeedsLogin", what="NeedsLogin")
    assert "tailscale0" in c.run("ip -n x link show tailscale0").stdout


def test_packaged_tailscaled_unit_starts(booted_debian: Container, tailscale_deb: Path) -> None:
    # The unit a later lab enables for the host's own tailnet: Type=notify,
    # /etc/default/tailscaled expansion and --cleanup on stop all work.
    c = booted_debian
    c.copy_in(tailscale_deb, f"/srv/{tailscale_deb.name}")
    c.run(["dpkg", "-i", f"/srv/{tailscale_deb.name}"])
    # The container's private network has only lo, so nothing leaves it anyway.
    c.run(["sed", "-i", 's/^FLAGS=.*/FLAGS="--no-logs-no-support"/', "/etc/default/tailscaled"])
    c.run(["systemctl", "start", "tailscaled.service"])  # returns once READY=1
    wait_for(lambda: backend_state(c, "/run/tailscale/tailscaled.sock") == "NeedsLogin", what="NeedsLogin")
    assert "tailscale0" in c.run("ip link show tailscale0").stdout
    c.run(["systemctl", "stop", "tailscaled.service"])
    assert c.run("ip link show tailscale0", check=False).returncode != 0


def backend_state(c: Container, socket: str) -> str:
    proc = c.run(["tailscale", f"--socket={socket}", "status", "--json"], check=False)
    try:
        return json.loads(proc.stdout).get("BackendState", "")
    except ValueError:
        return ""


def test_reboot_keeps_disk(booted_debian: Container) -> None:
    c = booted_debian
    c.write_file("/srv/before-reboot", "still here\n")
    first_boot = c.run(["cat", "/proc/sys/kernel/random/boot_id"]).stdout
    c.reboot()
    assert c.run(["cat", "/srv/before-reboot"]).stdout == "still here\n"
    assert c.run(["systemctl", "is-system-running"], check=False).stdout.strip() == "running"
    # Same disk, new boot: the persistent journal holds both.
    listing = c.run(["journalctl", "--list-boots", "--no-pager"]).stdout.splitlines()
    boots = [line for line in listing if re.match(r"\s*-?\d+\s+[0-9a-f]{32}\s", line)]
    assert len(boots) == 2, boots
    # nspawn gives each start its own boot id.
    assert c.run(["cat", "/proc/sys/kernel/random/boot_id"]).stdout != first_boot
