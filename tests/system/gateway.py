"""A stand-in for the user's gateway host inside a booted container: the host's tailnet
address on a `tailscale0`, a fake uplink to an "internet" namespace (TEST-NET addresses that
exist only inside the container), and the tailscale and tsproxy packages installed the way
a user installs them. Used by the system tests, `make demo` and the start-time benchmark."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import build_root
import images
from nspawn import Container

REPO = Path(__file__).resolve().parents[2]
HOST_TS_IP = "100.121.76.21"
INTERNET = "198.51.100.1"  # TEST-NET-2
UPLINK = "198.51.100.2"
# No log upload from any test tailscaled (nor its --cleanup run): nothing outside the
# container is ever there to take it.
NO_LOGS_DROP_IN = ("/etc/systemd/system/tsproxy-tailscaled@.service.d/no-logs.conf",
                   "[Service]\nEnvironment=TS_NO_LOGS_NO_SUPPORT=true\n")

NETWORK = f"""
set -e
# The host's own tailscaled is the lab's business: a TUN device carries its address here
# (not every kernel has the dummy driver).
ip tuntap add dev tailscale0 mode tun
ip addr add {HOST_TS_IP}/32 dev tailscale0
ip link set tailscale0 up
ip netns add internet
ip link add uplink0 type veth peer name eth0 netns internet
ip addr add {UPLINK}/24 dev uplink0
ip link set uplink0 up
ip -n internet addr add {INTERNET}/24 dev eth0
ip -n internet link set eth0 up
ip -n internet link set lo up
ip route add default via {INTERNET}
"""

# A web server that answers with the address it saw the client at (argv[1]: where it listens).
WHOAMI = ("import http.server as h, sys\n"
          "class W(h.BaseHTTPRequestHandler):\n"
          "    def do_GET(self):\n"
          "        self.send_response(200); self.end_headers()\n"
          "        self.wfile.write(self.client_address[0].encode())\n"
          "h.HTTPServer((sys.argv[1], 8080), W).serve_forever()\n")


def tsproxy_deb(suite: str | None = None) -> Path:
    """The package a user of `suite` gets: `make deb`'s for this host's own release, else
    the one built on `suite` itself (in a build root, once per session: see build_root.py)."""
    if suite is not None and suite != images.host_codename():
        return build_root.package(suite).file("tsproxy_*_all.deb")
    debs = sorted(REPO.glob("dist/tsproxy_*_all.deb"))
    if not debs:
        raise FileNotFoundError("no dist/tsproxy_*_all.deb: run `make deb` first")
    return debs[-1]


def suite_of(container: Container) -> str:
    return container.run(". /etc/os-release && echo $VERSION_CODENAME").stdout.strip()


def bring_up_network(container: Container) -> None:
    """The network a host has at boot (run again after each reboot: none of it persists)."""
    container.run(NETWORK)
    serve_whoami(container, "internet", INTERNET)


def serve_whoami(container: Container, netns: str, address: str) -> None:
    """The whoami web server on address:8080 in namespace netns, as unit NETNS-web."""
    container.write_file("/root/whoami.py", WHOAMI)
    container.run(f"systemd-run --unit={netns}-web -p NetworkNamespacePath=/run/netns/{netns} "
                  f"/usr/bin/python3 /root/whoami.py {address}")


def dig(container: Container, *args: str) -> str:
    """The host's own dig, run in the container's network namespace (the image has none): a
    third-party client on the gateway, asking the responder on the host's tailnet address."""
    done = subprocess.run(["nsenter", "-t", str(container.pid1), "-n", "dig", f"@{HOST_TS_IP}",
                           "+time=3", "+tries=1", *args],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def install(container: Container, tailscale_deb: Path, confs: dict[str, str]) -> None:
    """As the user does it: apt resolves tsproxy's Depends (tailscale among them)."""
    deb = tsproxy_deb(suite_of(container))
    container.copy_in(tailscale_deb, f"/root/{tailscale_deb.name}")
    container.copy_in(deb, f"/root/{deb.name}")
    container.run(f"cd /root && apt-get install -y -q ./{tailscale_deb.name} ./{deb.name}",
                  env={"DEBIAN_FRONTEND": "noninteractive"})
    container.write_file(*NO_LOGS_DROP_IN)
    for name, text in confs.items():
        container.write_file(f"/etc/tsproxy.d/{name}", text)


@contextlib.contextmanager
def booted_with_package(confs: dict[str, str], network: bool = False) -> Iterator[Container]:
    """For the benchmarks (tools/bench-*): a booted Debian 12 with the test tailscale and
    dist/'s tsproxy installed as the user does it, and `confs`; with `network`, the host's."""
    tailscale_deb = subprocess.run([str(REPO / "tests/tailscale/build-deb"), "/tmp"], check=True,
                                   capture_output=True, text=True).stdout.split()[-1]
    with Container.from_image(images.ensure_base_image()) as container:
        container.boot()
        container.wait_running()
        if network:
            bring_up_network(container)
        install(container, Path(tailscale_deb), confs)
        yield container
