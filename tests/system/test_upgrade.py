"""Upgrading tsproxy keeps every tailnet serving: no failed request or query, no tailnet down.

One boot per Debian release runs the whole life of the package under load: two instances
running, each behind a simulated tailnet (fake_tailnet.py), curl looping requests through
both proxies (quick ones, and slow ones that are in flight when the proxy restarts) and dig
looping queries (UDP and TCP) at the DNS responder, while apt installs a newer tsproxy,
reinstalls it, and goes back to the older one. Each time the listening sockets stay with
systemd, the proxies, the DNS responder and the watchdogs restart on the new code, and
tailscaled, the namespaces and the nodes' state are left alone. Then remove stops
everything and keeps the confs, and purge forgets tailscaled's state.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import fake_tailnet
import pytest
from client_loops import Loop, expect_output, in_netns, looping
from gateway import HOST_TS_IP, bring_up_network, install, tsproxy_deb
from newer_deb import build_newer_deb, version_of
from nspawn import Container, wait_for
from test_package import assert_instance_gone, backend_state, listening, netns_list, unit_state

pytestmark = pytest.mark.system

INSTANCES = {"fgpu": 11080, "work": 11081}
SETTLE = 1.5  # seconds of loops before and after each apt run
APT_ENV = {"DEBIAN_FRONTEND": "noninteractive"}


@pytest.fixture(scope="session")
def newer_deb() -> Path:
    return build_newer_deb(tsproxy_deb())


def client_loops(c: Container) -> list[Loop]:
    loops = []
    for name, port in INSTANCES.items():
        url = f"http://{fake_tailnet.PEER}.{name}:{fake_tailnet.PORT}"
        curl = ["curl", "-sS", "-m", "15", "--socks5-hostname", f"{HOST_TS_IP}:{port}"]
        loops.append(Loop(f"curl via {name}", in_netns(c.pid1, *curl, f"{url}/"),
                          expect_output(name)))
        loops.append(Loop(f"slow curl via {name}",
                          in_netns(c.pid1, *curl, f"{url}{fake_tailnet.SLOW_PATH}"),
                          expect_output(name)))
    dig = ["dig", f"@{HOST_TS_IP}", "+time=5", "+tries=1", "+short"]
    loops.append(Loop("dig udp", in_netns(c.pid1, *dig, "10.1.2.3.fgpu"),
                      expect_output("10.1.2.3")))
    loops.append(Loop("dig tcp", in_netns(c.pid1, *dig, "+tcp", "10.1.2.4.work"),
                      expect_output("10.1.2.4")))
    # Systemd's sockets and the namespaces, looked at all along.
    sockets = [f"tsproxy-socks@{n}.socket" for n in INSTANCES] + ["tsproxy-dns.socket"]
    look = (f"systemctl is-active {' '.join(sockets)}; "
            + "; ".join(f"test -e /run/netns/ts-{n} && echo ts-{n}" for n in INSTANCES))
    loops.append(Loop("sockets and namespaces",
                      ["nsenter", "-t", str(c.pid1), "-a", "sh", "-c", look],
                      expect_output("\n".join(["active"] * len(sockets)
                                              + [f"ts-{n}" for n in INSTANCES])),
                      pause=0.1))
    return loops


def show(c: Container, unit: str, prop: str) -> str:
    return c.run(f"systemctl show -P {prop} {unit}").stdout.strip()


def kept(c: Container) -> dict[str, str]:
    """What an upgrade must leave alone."""
    facts = {}
    for name in INSTANCES:
        facts[f"tailscaled@{name} pid"] = show(c, f"tsproxy-tailscaled@{name}.service",
                                               "MainPID")
        facts[f"tsproxy@{name} run"] = show(c, f"tsproxy@{name}.service", "InvocationID")
        facts[f"ts-{name} inode"] = c.run(f"stat -c %i /run/netns/ts-{name}").stdout.strip()
        facts[f"{name} backend"] = backend_state(c, name)
        facts[f"socks@{name}.socket since"] = show(c, f"tsproxy-socks@{name}.socket",
                                                   "ActiveEnterTimestampMonotonic")
    facts["dns.socket since"] = show(c, "tsproxy-dns.socket", "ActiveEnterTimestampMonotonic")
    return facts


def restarted(c: Container) -> dict[str, str]:
    """What an upgrade must restart on the new code: the running services' main pids."""
    units = ([f"tsproxy-socks@{n}.service" for n in INSTANCES] + ["tsproxy-dns.service"]
             + [f"tsproxy-watch@{n}.service" for n in INSTANCES])
    return {unit: show(c, unit, "MainPID") for unit in units}


def apt_under_load(c: Container, command: str, version: str) -> float:
    """Runs `command` while the clients loop; asserts that none failed and what stayed and
    what restarted; returns the wall time of the apt command."""
    kept_before, pids_before = kept(c), restarted(c)
    assert "0" not in pids_before.values(), pids_before
    with looping(client_loops(c)) as loops:
        time.sleep(SETTLE)
        started = time.monotonic()
        c.run(f"cd /root && {command}", env=APT_ENV, timeout=300)
        took = time.monotonic() - started
        time.sleep(SETTLE)
    summaries = [loop.summary() for loop in loops]
    print(f"{command}: {took:.1f} s; " + "; ".join(summaries))
    assert all(loop.ok > 0 and loop.failed == 0 for loop in loops), summaries
    assert c.run("dpkg-query -W -f '${Version}' tsproxy").stdout == version
    assert kept(c) == kept_before
    pids_after = restarted(c)
    for unit, pid in pids_after.items():
        assert pid not in ("0", pids_before[unit]), f"{unit} not restarted: {pid}"
        assert unit_state(c, unit) == "active", unit
    return took


def test_upgrade_reinstall_downgrade_remove_purge(booted_debian: Container,
                                                  tailscale_deb: Path,
                                                  newer_deb: Path) -> None:
    c = booted_debian
    old_deb = tsproxy_deb()
    old, new = version_of(old_deb), version_of(newer_deb)
    bring_up_network(c)
    install(c, tailscale_deb, {f"{n}.conf": f"listen = {HOST_TS_IP}:{p}\n"
                               for n, p in INSTANCES.items()})
    c.write_file(*fake_tailnet.DROP_IN)
    c.copy_in(newer_deb, f"/root/{newer_deb.name}")
    c.run(f"systemctl daemon-reload && systemctl start {' '.join(f'tsproxy@{n}' for n in INSTANCES)}")
    for name in INSTANCES:
        wait_for(lambda name=name: backend_state(c, name) == "NeedsLogin",
                 what=f"tailscaled of {name}")
        fake_tailnet.attach(c, name)
        wait_for(lambda name=name: unit_state(c, f"tsproxy-watch@{name}.service") == "active",
                 what=f"the watchdog of {name}")
    # The first request of each kind starts its socket-activated service.
    with looping(client_loops(c)) as loops:
        wait_for(lambda: all(loop.ok for loop in loops), what="every client's first answer")

    durations = [
        apt_under_load(c, f"apt-get install -y -q ./{newer_deb.name}", new),
        apt_under_load(c, f"apt-get install -y -q --reinstall ./{newer_deb.name}", new),
        apt_under_load(c, f"apt-get install -y -q --allow-downgrades ./{old_deb.name}", old),
    ]
    print(f"apt wall time: upgrade {durations[0]:.1f} s, reinstall {durations[1]:.1f} s, "
          f"downgrade {durations[2]:.1f} s (median {statistics.median(durations):.1f} s)")
    # Nothing of the first install's was started twice: one proxy start line per restart.
    journal = c.run("journalctl -b -u tsproxy-socks@fgpu --no-pager -o cat").stdout
    assert journal.count("fgpu: stopping: no new connections") == 3, journal

    c.run("apt-get remove -y -q tsproxy", env=APT_ENV)
    for name, port in INSTANCES.items():
        assert_instance_gone(c, name)
        assert f"{HOST_TS_IP}:{port}" not in listening(c)
    assert not {f"ts-{n}" for n in INSTANCES} & netns_list(c)
    assert f"{HOST_TS_IP}:53" not in listening(c)
    c.run("test -f /etc/tsproxy.d/fgpu.conf && test -d /var/lib/tsproxy/fgpu")
    c.run("apt-get purge -y -q tsproxy", env=APT_ENV)
    assert c.run("test -e /var/lib/tsproxy", check=False).returncode != 0
    c.run("test -f /etc/tsproxy.d/fgpu.conf && test -f /etc/tsproxy.d/work.conf")
