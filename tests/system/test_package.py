"""The .deb in a booted Debian 12 and 13: from conf files to running, isolated tailnets, and back.

The container stands in for the user's host (tests/system/gateway.py): `tailscale0` carries
the host's tailnet address (the primary tailnet is the lab's job), and a fake uplink leads to an
"internet" namespace inside the container, so egress through NAT is real but nothing
leaves the container.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from gateway import HOST_TS_IP, INTERNET, UPLINK, bring_up_network, dig, install
from nspawn import Container, wait_for

pytestmark = pytest.mark.system

CONFS = {
    "fgpu.conf": f"listen = {HOST_TS_IP}:11080\n",
    "work.conf": f"# a second tailnet beside the first\nlisten = {HOST_TS_IP}:11081\n"
                 "tailscaled_args = --verbose=1\n",
    "lab.conf": f"listen = {HOST_TS_IP}:11082\nautostart = no\n",
    "broken.conf": f"listen = {HOST_TS_IP}:11083\nport = 1\n",
}
AUTOSTARTED = ("fgpu", "work")


def unit_state(container: Container, unit: str) -> str:
    return container.run(["systemctl", "is-active", unit], check=False).stdout.strip()


def netns_list(container: Container) -> set[str]:
    out = container.run("ip -j netns list").stdout or "[]"
    return {ns["name"] for ns in json.loads(out)}


def nft_tables(container: Container) -> set[str]:
    out = json.loads(container.run("nft -j list tables").stdout)
    return {f"{t['table']['family']} {t['table']['name']}" for t in out["nftables"] if "table" in t}


def listening(container: Container) -> set[str]:
    out = container.run("ss -Hltn").stdout
    return {line.split()[3] for line in out.splitlines()}


def backend_state(container: Container, name: str) -> str:
    out = container.run(f"tailscale --socket=/run/tsproxy/{name}/tailscaled.sock status --json",
                        check=False).stdout
    return json.loads(out)["BackendState"] if out.strip() else "(no answer)"


def assert_instance_up(container: Container, name: str, port: int) -> None:
    assert unit_state(container, f"tsproxy@{name}.service") == "active"
    assert f"ts-{name}" in netns_list(container)
    link = json.loads(container.run(f"ip -j addr show dev ts-{name}").stdout)[0]
    assert "UP" in link["flags"]
    ns_addrs = json.loads(container.run(f"ip -n ts-{name} -j addr show").stdout)
    assert {a["ifname"] for a in ns_addrs} >= {"lo", "eth0"}
    assert all("UP" in a["flags"] for a in ns_addrs if a["ifname"] in ("lo", "eth0"))
    routes = json.loads(container.run(f"ip -n ts-{name} -j route show default").stdout)
    assert routes and routes[0]["gateway"] == link["addr_info"][0]["local"]
    assert f"inet tsproxy-{name}" in nft_tables(container)
    wait_for(lambda: unit_state(container, f"tsproxy-tailscaled@{name}.service") == "active",
             what=f"tailscaled of {name}")
    # The official tailscaled, in its own namespace, with its own state, socket and TUN.
    assert backend_state(container, name) == "NeedsLogin"
    container.run(f"ip -n ts-{name} link show tailscale0")
    container.run(f"test -d /var/lib/tsproxy/{name} && test -S /run/tsproxy/{name}/tailscaled.sock")
    resolv = container.run(f"cat /proc/$(systemctl show -P MainPID tsproxy-tailscaled@{name})"
                           "/root/etc/resolv.conf").stdout
    assert "tsproxy" in resolv
    assert f"{HOST_TS_IP}:{port}" in listening(container)
    # Egress through NAT, seen from the fake internet as the container's uplink address.
    seen = container.run(f"ip netns exec ts-{name} curl -sS -m 5 http://{INTERNET}:8080/").stdout
    assert seen == UPLINK


def assert_proxy_inside_the_namespace(container: Container, name: str, port: int) -> None:
    """The proxy answers through socket activation on the host's address, runs inside the
    namespace, and reaches only what is behind the namespace's tailscale0: here nothing (no
    tailnet is logged in), so even the fake internet the namespace's NAT reaches is refused."""
    proxy = f"socks5h://{HOST_TS_IP}:{port}"
    # A name that would rebind to the gateway's own loopback: refused by policy (REP 2).
    rebind = container.run(f"curl -sS -m 10 -x {proxy} http://127.0.0.1.{name}/", check=False)
    assert rebind.returncode == 97 and "(2)" in rebind.stderr, rebind.stderr
    # Reachable through the namespace's NAT, but not through its tailscale0: unreachable.
    egress = container.run(f"curl -sS -m 10 -x {proxy} http://{INTERNET}:8080/", check=False)
    assert egress.returncode == 97 and "(3)" in egress.stderr, egress.stderr  # REP 3
    pid = container.run(f"systemctl show -P MainPID tsproxy-socks@{name}.service").stdout.strip()
    assert container.run(f"ip netns identify {pid}").stdout.strip() == f"ts-{name}"
    # The host itself has no other way in: no route through the veth but its own /30, so a
    # tailnet address (here the namespace's own tailscale0 range) is never sent there.
    routes = json.loads(container.run(f"ip -4 -j route show table main dev ts-{name}").stdout)
    assert len(routes) == 1 and routes[0]["dst"].endswith("/30"), routes
    for tailnet_address in ("100.64.0.2", "100.100.100.100", "fd7a:115c:a1e0::2"):
        route = container.run(f"ip route get {tailnet_address}", check=False).stdout
        assert f"dev ts-{name}" not in route, route
    # One journal line per connection, with the destination and the outcome.
    wait_for(lambda: "127.0.0.1." in container.run(
        f"journalctl -b -u tsproxy-socks@{name} --no-pager -o cat").stdout,
        what="the proxy's connection log line")
    # Counters for the status command, kept apart from tailscaled's runtime directory.
    stats = wait_for(lambda: json.loads(container.run(
        f"cat /run/tsproxy-socks/{name}/stats.json", check=False).stdout or "{}").get("total"),
        what="the proxy's counters")
    assert stats >= 2


def assert_dns_answers(container: Container) -> None:
    """One responder, in the host namespace, for every conf's names; peers need a logged-in
    tailscaled (none here: SERVFAIL, quickly), IP-embedded names never do."""
    assert unit_state(container, "tsproxy-dns.socket") == "active"
    for transport in ("+notcp", "+tcp"):
        assert dig(container, transport, "+short", "10.100.10.141.fgpu").split() == ["10.100.10.141"]
        assert dig(container, transport, "+short", "1.2.3.4.fgpu").split() == ["1.2.3.4"]
    assert "status: SERVFAIL" in dig(container, "web.fgpu")  # fgpu's tailscaled: NeedsLogin
    assert "status: REFUSED" in dig(container, "example.com")
    assert "status: REFUSED" in dig(container, "1.2.3.4.broken")  # the bad conf serves nothing
    assert dig(container, "+short", "10.0.0.1.work").split() == ["10.0.0.1"]
    pid = container.run("systemctl show -P MainPID tsproxy-dns.service").stdout.strip()
    assert container.run(f"ip netns identify {pid}").stdout.strip() == ""  # the host's namespace
    assert "serving fgpu: fgpu, lab: lab, work: work" in container.run(
        "journalctl -b -u tsproxy-dns --no-pager -o cat").stdout


def assert_instance_gone(container: Container, name: str) -> None:
    assert f"ts-{name}" not in netns_list(container)
    assert container.run(f"ip link show ts-{name}", check=False).returncode != 0
    assert f"inet tsproxy-{name}" not in nft_tables(container)
    for unit in (f"tsproxy@{name}.service", f"tsproxy-tailscaled@{name}.service",
                 f"tsproxy-socks@{name}.socket"):
        assert unit_state(container, unit) in ("inactive", "failed"), unit
    assert container.run(f"test -e /etc/netns/ts-{name}", check=False).returncode != 0


def test_conf_to_running_tailnets_and_back(booted_debian: Container, tailscale_deb: Path) -> None:
    c = booted_debian
    resolv_before = c.run("cat /etc/resolv.conf").stdout
    bring_up_network(c)
    install(c, tailscale_deb, CONFS)
    routes_before = c.run("ip -4 route show table all").stdout
    c.run("systemctl daemon-reload")

    # The bad conf is skipped with one line naming file and key; `check` says the same.
    journal = c.run("journalctl -b -t tsproxy-generator --no-pager -o cat").stdout
    assert "/etc/tsproxy.d/broken.conf: port: unknown key (see tsproxy.d(5)) (skipped)" in journal
    check = c.run("tsproxy check", check=False)
    assert check.returncode == 1
    assert check.stderr == "/etc/tsproxy.d/broken.conf: port: unknown key (see tsproxy.d(5))\n"
    assert "/etc/tsproxy.d/fgpu.conf: ok" in check.stdout

    # Every generated unit passes systemd's own checks.
    units = [f"{u}@{n}.{t}" for n in ("fgpu", "work", "lab") for u, t in
             (("tsproxy", "service"), ("tsproxy-tailscaled", "service"),
              ("tsproxy-socks", "socket"), ("tsproxy-socks", "service"))]
    units += ["tsproxy-dns.socket", "tsproxy-dns.service"]
    # The container has no man-db: the man pages are checked as files instead.
    verify = c.run(["systemd-analyze", "verify", "--generators=yes", "--man=no", *units], check=False)
    c.run("test -f /usr/share/man/man8/tsproxy.8.gz && test -f /usr/share/man/man5/tsproxy.d.5.gz")
    # The only complaint allowed: the generator's exit status 1 for broken.conf.
    complaints = [line for line in verify.stderr.splitlines()
                  if line and "tsproxy-generator failed with exit status 1" not in line]
    assert verify.returncode == 0 and complaints == [], verify.stderr

    c.run("systemctl start tsproxy@fgpu tsproxy@work")
    assert_instance_up(c, "fgpu", 11080)
    assert_instance_up(c, "work", 11081)
    assert unit_state(c, "tsproxy@lab.service") == "inactive"

    assert_proxy_inside_the_namespace(c, "fgpu", 11080)
    assert_dns_answers(c)

    # The broken conf never starts, and says why.
    bad = c.run("systemctl start tsproxy@broken", check=False)
    assert bad.returncode != 0
    assert "broken.conf: port: unknown key" in c.run("journalctl -b -u tsproxy@broken --no-pager").stdout
    assert "ts-broken" not in netns_list(c)

    # Stop removes exactly what start made; the other tailnet is untouched.
    c.run("systemctl stop tsproxy@fgpu")
    assert_instance_gone(c, "fgpu")
    assert_instance_up(c, "work", 11081)
    # Start, restart and stop again, any number of times.
    c.run("systemctl start tsproxy@fgpu && systemctl start tsproxy@fgpu")
    c.run("for i in $(seq 8); do systemctl restart tsproxy@fgpu; done")  # past systemd's start limit
    assert_instance_up(c, "fgpu", 11080)
    c.run("systemctl stop tsproxy@fgpu tsproxy@work && systemctl stop tsproxy@fgpu")
    assert_instance_gone(c, "fgpu")
    assert_instance_gone(c, "work")
    assert c.run("ip -4 route show table all").stdout == routes_before
    assert not any(t.startswith("inet tsproxy") for t in nft_tables(c))

    # A reboot brings back every autostart conf with no manual step.
    c.reboot()
    bring_up_network(c)
    for name in AUTOSTARTED:
        unit = f"tsproxy@{name}.service"
        wait_for(lambda unit=unit: unit_state(c, unit) == "active", what=unit)
    assert_instance_up(c, "fgpu", 11080)
    assert_instance_up(c, "work", 11081)
    assert unit_state(c, "tsproxy@lab.service") == "inactive"
    assert "ts-broken" not in netns_list(c)
    assert_dns_answers(c)
    assert c.run("cat /etc/resolv.conf").stdout == resolv_before



DOCKER_LIKE = """table ip filter {
    chain DOCKER-USER { }
    chain FORWARD { type filter hook forward priority filter; policy drop; jump DOCKER-USER; }
}
"""


def test_egress_on_a_docker_host(booted_debian: Container, tailscale_deb: Path) -> None:
    """Docker's FORWARD policy is DROP: egress still works, through two tagged DOCKER-USER
    rules that stop removes again; nothing else in Docker's table changes."""
    c = booted_debian
    bring_up_network(c)
    install(c, tailscale_deb, {"fgpu.conf": CONFS["fgpu.conf"]})
    c.write_file("/root/docker-like.nft", DOCKER_LIKE)
    c.run("nft -f /root/docker-like.nft && systemctl daemon-reload")
    before = c.run("nft list table ip filter").stdout
    c.run("systemctl start tsproxy@fgpu")
    assert 'comment "tsproxy-fgpu"' in c.run("nft list chain ip filter DOCKER-USER").stdout
    seen = c.run(f"ip netns exec ts-fgpu curl -sS -m 5 http://{INTERNET}:8080/").stdout
    assert seen == UPLINK
    c.run("systemctl stop tsproxy@fgpu")
    assert c.run("nft list table ip filter").stdout == before


def test_unattended_login_uses_the_conf(booted_debian: Container, tailscale_deb: Path) -> None:
    """With authkey_file set, tsproxy-login@ runs `tailscale up` with the conf's key and
    login server, and tailscaled reaches that server from inside the namespace. (A real
    login against a real control server is the lab's test; here the "server" is the fake
    internet's web server, which logs who asked for what.)"""
    c = booted_debian
    bring_up_network(c)
    c.write_file("/etc/tsproxy.d/lab.key", "tskey-auth-test\n", mode=0o600)
    install(c, tailscale_deb, {"lab.conf": f"listen = {HOST_TS_IP}:11082\n"
                                           "authkey_file = /etc/tsproxy.d/lab.key\n"
                                           f"login_server = http://{INTERNET}:8080\n"})
    c.run("systemctl daemon-reload && systemctl start tsproxy@lab")
    wait_for(lambda: "--auth-key=file:/etc/tsproxy.d/lab.key" in
             c.run("journalctl -b -u tsproxy-login@lab --no-pager").stdout,
             what="tsproxy-login@lab running tailscale up")
    login = c.run("journalctl -b -u tsproxy-login@lab --no-pager -o cat").stdout
    assert f"up --reset --accept-dns=false --accept-routes=true --hostname=tsproxy-lab " \
           f"--login-server=http://{INTERNET}:8080 --auth-key=file:/etc/tsproxy.d/lab.key" in login
    # The control "server" saw tailscaled's request, NATed out of the namespace.
    wait_for(lambda: f"{UPLINK} - - " in c.run("journalctl -b -u internet-web --no-pager").stdout,
             what="tailscaled's request at the login server")


def test_remove_stops_everything_and_purge_forgets_state(booted_debian: Container,
                                                         tailscale_deb: Path) -> None:
    c = booted_debian
    bring_up_network(c)
    install(c, tailscale_deb, {"fgpu.conf": CONFS["fgpu.conf"]})
    c.run("systemctl daemon-reload && systemctl start tsproxy@fgpu")
    assert_instance_up(c, "fgpu", 11080)
    assert f"{HOST_TS_IP}:53" in listening(c)
    c.run("apt-get remove -y -q tsproxy", env={"DEBIAN_FRONTEND": "noninteractive"})
    assert_instance_gone(c, "fgpu")
    assert f"{HOST_TS_IP}:11080" not in listening(c)
    # The DNS responder, shared by every instance, goes too.
    assert f"{HOST_TS_IP}:53" not in listening(c)
    for unit in ("tsproxy-dns.socket", "tsproxy-dns.service"):
        assert unit_state(c, unit) in ("inactive", "failed"), unit
    # Removed, not purged: the user's confs and tailscaled's state (its node key) stay.
    c.run("test -f /etc/tsproxy.d/fgpu.conf && test -d /var/lib/tsproxy/fgpu")
    c.run("apt-get purge -y -q tsproxy", env={"DEBIAN_FRONTEND": "noninteractive"})
    assert c.run("test -e /var/lib/tsproxy", check=False).returncode != 0
    c.run("test -f /etc/tsproxy.d/fgpu.conf")  # the user's own file, never the package's
