"""`tsproxy client --for linux`, pasted as printed into a booted Debian that runs
systemd-resolved: resolved itself (resolvectl, the 127.0.0.53 stub, glibc's getent) is the judge
that the drop-in parses and sends the tailnet's names to the gateway's DNS responder.

The gateway and the "client" share the container here: the responder listens on the host's
tailnet address, resolved on 127.0.0.53, and the drop-in joins them.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from gateway import HOST_TS_IP, bring_up_network, install
from nspawn import Container, wait_for

pytestmark = pytest.mark.system

# The container has no network: resolved is installed into its root before it boots, from
# the same Debian mirror the base image came from.
INSTALL_RESOLVED = ("apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "
                    "--no-install-recommends systemd-resolved && apt-get clean")
# The snippet is for a user with sudo; the tests run as root without it.
SUDO = "#!/bin/sh\nexec \"$@\"\n"


@pytest.fixture
def resolved_debian(debian_root: Path) -> Iterator[Container]:
    done = subprocess.run(["chroot", str(debian_root), "sh", "-c", INSTALL_RESOLVED],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    container = Container(debian_root, workdir=debian_root.parent)
    try:
        container.boot()
        container.wait_running()
        yield container
    finally:
        container.kill()


def test_linux_snippet_in_systemd_resolved(resolved_debian: Container, tailscale_deb: Path) -> None:
    c = resolved_debian
    bring_up_network(c)
    install(c, tailscale_deb, {"fgpu.conf": f"listen = {HOST_TS_IP}:11080\n"
                                            "dns_domains = corp.example\n"})
    c.run("systemctl daemon-reload && systemctl start tsproxy@fgpu")
    wait_for(lambda: c.run("systemctl is-active tsproxy-dns.socket", check=False).stdout.strip()
             == "active", what="tsproxy-dns.socket")

    snippet = c.run("tsproxy client --for linux").stdout
    c.write_file("/usr/local/bin/sudo", SUDO, mode=0o755)
    c.run(["bash", "-euo", "pipefail", "-c", snippet])

    # resolved read the drop-in as meant: one global server, routing-only domains.
    assert "/etc/systemd/resolved.conf.d/tsproxy-fgpu.conf" in c.run(
        "systemd-analyze cat-config systemd/resolved.conf").stdout
    assert c.run("resolvectl dns").stdout.splitlines()[0].split() == ["Global:", HOST_TS_IP]
    domains = c.run("resolvectl domain").stdout.splitlines()[0].split()
    assert domains[0] == "Global:" and sorted(domains[1:]) == ["~corp.example", "~fgpu"]

    # And it asks the responder for the tailnet's names: through its API and its stub.
    query = c.run("resolvectl query --cache=no 10.100.10.141.fgpu").stdout
    assert "10.100.10.141.fgpu: 10.100.10.141" in query
    assert c.run("getent hosts 10.1.2.3.fgpu").stdout.split() == ["10.1.2.3", "10.1.2.3.fgpu"]
    # A peer needs fgpu's tailscaled logged in (it is not here): resolved reports the failure.
    peer = c.run("resolvectl query --cache=no web.fgpu", check=False)
    assert peer.returncode != 0
    # As the snippet says: a global server is asked other names too, and refuses them.
    other = c.run("resolvectl query --cache=no example.com", check=False)
    assert other.returncode != 0 and "REFUSED" in other.stderr
