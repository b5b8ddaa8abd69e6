"""The seed's Usage section end to end, with real tailscaled on two offline tailnets.

A "mac" on the home tailnet reaches the fgpu tailnet through the gateway's home address
only: the gateway's own tailscaled is on home, tsproxy's instance fgpu (from
/etc/tsproxy.d/fgpu.conf, auth key and login server in the conf) is on fgpu, and both
tailnets hand out 100.64.0.N, so the same addresses mean different nodes on each side.
Third-party clients are the judges: curl, dig, ssh with nc, Chromium.
"""

from __future__ import annotations

import pytest
from conftest import PORT, Lab
from world import WEB_PAGE

pytestmark = pytest.mark.lab


def mac_curl(lab: Lab, *args: str, node: str = "mac") -> tuple[int, str]:
    proc = lab.world.nodes[node].exec(["curl", "-sS", "-m", "15", *args], check=False, timeout=30)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.parametrize("proxy", ["socks5h", "connect"])
@pytest.mark.parametrize("host", ["ip", "name"])
def test_web_through_the_gateway(lab: Lab, proxy: str, host: str) -> None:
    """(1) curl from the mac, by fgpu address and by peer name, SOCKS5 and HTTP CONNECT."""
    name = f"{lab.web_ip}.fgpu" if host == "ip" else "web.fgpu"
    via = (["-x", f"socks5h://{lab.gw_ip}:{PORT}"] if proxy == "socks5h"
           else ["-p", "-x", f"http://{lab.gw_ip}:{PORT}"])
    rc, out = mac_curl(lab, *via, f"http://{name}:3000/")
    assert (rc, out) == (0, WEB_PAGE)


@pytest.mark.parametrize("name", ["ip", "web", "ssh"])
def test_dig_through_the_gateway(lab: Lab, name: str) -> None:
    """(2) the gateway's DNS answers fgpu names with fgpu addresses (not home's)."""
    qname, want = {"ip": (f"{lab.web_ip}.fgpu", lab.web_ip), "web": ("web.fgpu", lab.web_ip),
                   "ssh": ("ssh.fgpu", lab.ssh_ip)}[name]
    out = lab.world.nodes["mac"].exec(["dig", "+short", "+time=3", "+tries=2", f"@{lab.gw_ip}", qname, "A"]).stdout
    assert out.split() == [want]
