"""The .deb in a booted Debian 12: from conf files to running, isolated tailnets, and back.

The container stands in for the user's host: a dummy `tailscale0` carries the host's
tailnet address (the primary tailnet is the lab's job), and a fake uplink leads to an
"internet" namespace inside the container, so egress through NAT is real but nothing
leaves the container.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from nspawn import Container

pytestmark = pytest.mark.system

HOST_TS_IP = "100.121.76.21"
INTERNET = "198.51.100.1"  # TEST-NET-2, exists only in the container's fake uplink
CONFS = {
    "fgpu.conf": f"listen = {HOST_TS_IP}:11080\n",
    "work.conf": f"# a second tailnet beside the first\nlisten = {HOST_TS_IP}:11081\n"
                 "tailscaled_args = --verbose=1\n",
    "lab.conf": f"listen = {HOST_TS_IP}:11082\nautostart = no\n",
    "broken.conf": f"listen = {HOST_TS_IP}:11083\nport = 1\n",
}
AUTOSTARTED = ("fgpu", "work")

NETWORK_SETUP = f"""
set -e
ip tuntap add dev tailscale0 mode tun  # no dummy driver in every kernel
ip addr add {HOST_TS_IP}/32 dev tailscale0
ip link set tailscale0 up
ip netns add internet
ip link add uplink0 type veth peer name eth0 netns internet
ip addr add 198.51.100.2/24 dev uplink0
ip link set uplink0 up
ip -n internet addr add {INTERNET}/24 dev eth0
ip -n internet link set eth0 up
ip -n internet link set lo up
ip route add default via {INTERNET}
"""
# A web server in the fake internet that answers with the address it saw the client at.
WHOAMI = ("import http.server as h\n"
          "class W(h.BaseHTTPRequestHandler):\n"
          "    def do_GET(self):\n"
          "        self.send_response(200); self.end_headers()\n"
          "        self.wfile.write(self.client_address[0].encode())\n"
          f"h.HTTPServer(('{INTERNET}', 8080), W).serve_forever()\n")


def deb_path() -> Path:
    debs = sorted(Path(__file__).parents[2].glob("dist/tsproxy_*_all.deb"))
    if not debs:
        pytest.fail("no dist/tsproxy_*_all.deb: run `make deb` first (`make test` does)")
    return debs[-1]


def set_up_host(container: Container, tailscale_deb: Path) -> None:
    """Everything the user's host has before tsproxy: network, the tailscale package."""
    container.run(NETWORK_SETUP)
    container.write_file("/root/whoami.py", WHOAMI)
    container.run("systemd-run --unit=internet-web -p NetworkNamespacePath=/run/netns/internet "
                  "/usr/bin/python3 /root/whoami.py")
    container.copy_in(tailscale_deb, f"/root/{tailscale_deb.name}")
    container.copy_in(deb_path(), f"/root/{deb_path().name}")
    # As the user does it: apt resolves tsproxy's Depends (tailscale among them).
    container.run(f"cd /root && apt-get install -y -q ./{tailscale_deb.name} ./{deb_path().name}",
                  env={"DEBIAN_FRONTEND": "noninteractive"})
    for name, text in CONFS.items():
        container.write_file(f"/etc/tsproxy.d/{name}", text)


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


def wait_for(predicate, timeout: float = 20, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


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
    assert seen == "198.51.100.2"


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
    set_up_host(c, tailscale_deb)
    routes_before = c.run("ip route show table all").stdout
    c.run("systemctl daemon-reload")

    # The bad conf is skipped with one line naming file and key; `check` says the same.
    journal = c.run("journalctl -b -k --no-pager -o cat").stdout
    assert "/etc/tsproxy.d/broken.conf: port: unknown key (see tsproxy.d(5)) (skipped)" in journal
    check = c.run("tsproxy check", check=False)
    assert check.returncode == 1
    assert check.stderr == "/etc/tsproxy.d/broken.conf: port: unknown key (see tsproxy.d(5))\n"
    assert "/etc/tsproxy.d/fgpu.conf: ok" in check.stdout

    # Every generated unit passes systemd's own checks.
    units = [f"{u}@{n}.{t}" for n in ("fgpu", "work", "lab") for u, t in
             (("tsproxy", "service"), ("tsproxy-tailscaled", "service"),
              ("tsproxy-socks", "socket"), ("tsproxy-socks", "service"))]
    verify = c.run(["systemd-analyze", "verify", *units], check=False)
    assert verify.returncode == 0 and verify.stderr == "", verify.stderr

    c.run("systemctl start tsproxy@fgpu tsproxy@work")
    assert_instance_up(c, "fgpu", 11080)
    assert_instance_up(c, "work", 11081)
    assert unit_state(c, "tsproxy@lab.service") == "inactive"

    # The placeholder proxy is reached through socket activation and refuses, loudly.
    curl = c.run(f"curl -sS -m 5 -x socks5h://{HOST_TS_IP}:11080 http://{INTERNET}:8080/",
                 check=False)
    assert curl.returncode != 0 and "198.51.100.2" not in curl.stdout
    wait_for(lambda: "placeholder" in c.run("journalctl -b -u tsproxy-socks@fgpu --no-pager").stdout,
             what="the placeholder's log line")

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
    c.run("systemctl start tsproxy@fgpu && systemctl start tsproxy@fgpu && systemctl restart tsproxy@fgpu")
    assert_instance_up(c, "fgpu", 11080)
    c.run("systemctl stop tsproxy@fgpu tsproxy@work && systemctl stop tsproxy@fgpu")
    assert_instance_gone(c, "fgpu")
    assert_instance_gone(c, "work")
    assert c.run("ip route show table all").stdout == routes_before
    assert not any(t.startswith("inet tsproxy") for t in nft_tables(c))

    # A reboot brings back every autostart conf with no manual step.
    c.reboot()
    c.run(NETWORK_SETUP.replace("ip netns add internet", "ip netns add internet || true"))
    c.run("systemd-run --unit=internet-web -p NetworkNamespacePath=/run/netns/internet "
          "/usr/bin/python3 /root/whoami.py")
    for name in AUTOSTARTED:
        wait_for(lambda: unit_state(c, f"tsproxy@{name}.service") == "active", what=name)
    assert_instance_up(c, "fgpu", 11080)
    assert_instance_up(c, "work", 11081)
    assert unit_state(c, "tsproxy@lab.service") == "inactive"
    assert "ts-broken" not in netns_list(c)
    assert c.run("cat /etc/resolv.conf").stdout == resolv_before

