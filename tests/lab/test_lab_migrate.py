"""Moving from the hand-made setup on real tailnets: the gateway runs the seed's units
(tests/seed.py), its tailscaled in namespace tsFGPU logged in to fgpu with an auth key as
the seed's README does it; `tsproxy migrate fgpu --stop --state-from` moves it, and
tsproxy@fgpu comes up as the same node (same node key, same 100.x address) with no login
(its conf has no auth key), serving the mac as socat did."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lab import PORT, TS_ENV_LINES, Lab, running_lab
from world import WEB_PAGE, wait_for

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import seed

pytestmark = pytest.mark.lab

OLD_UNITS = ["ts-netns.service", "tailscaled-tsFGPU.service", "socks-tsFGPU.service",
             "expose-socks-tsFGPU.service", "coredns-fgpu.service"]


@pytest.fixture(scope="module")
def bare_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    with running_lab(tmp_path_factory.mktemp("lab"), fgpu=False) as lab:
        yield lab


def node(lab: Lab, socket: str) -> dict[str, Any]:
    status = lab.gw_status(socket)
    self = status.get("Self") or {}
    return {"state": status.get("BackendState"), "key": self.get("PublicKey"),
            "ips": self.get("TailscaleIPs"), "id": self.get("ID")}


def test_the_node_moves_with_its_identity(bare_lab: Lab) -> None:
    lab, gw = bare_lab, bare_lab.gw
    # The seed, on fgpu (no socat in the lab's image: a copy of the stand-in holds 11080).
    gw.write_file(seed.SETUP_SCRIPT, seed.SETUP, mode=0o755)
    for binary in (seed.COREDNS, seed.MICROSOCKS, "/usr/local/bin/socat"):
        gw.write_file(binary, seed.stand_in(lab.gw_ip), mode=0o755)
    for name, text in seed.files(listen_ip=lab.gw_ip).items():
        gw.write_file(f"/etc/systemd/system/{name}",
                      text.replace("/usr/bin/socat", "/usr/local/bin/socat"))
    gw.write_file("/etc/systemd/system/tailscaled-tsFGPU.service.d/lab.conf",
                  f"[Service]\n{TS_ENV_LINES}")
    gw.run(f"systemctl daemon-reload && systemctl enable --now {' '.join(OLD_UNITS)}")
    wait_for(lambda: gw.run(f"test -S {seed.SOCKET}", check=False).returncode == 0, 30,
             what="the old tailscaled")
    gw.run(["ip", "netns", "exec", seed.NETNS, "tailscale", f"--socket={seed.SOCKET}", "up",
            f"--login-server={lab.world.state['fgpu_url']}",
            f"--auth-key={lab.world.state['fgpu_authkey']}", "--accept-routes",
            "--accept-dns=false", "--hostname=gateway", "--timeout=60s"], timeout=90)
    before = wait_for(lambda: (n := node(lab, seed.SOCKET))["state"] == "Running" and n, 30,
                      what="the old node on fgpu")

    # The conf: where socat listened; the login server, but no auth key to log in with.
    gw.write_file("/etc/tsproxy.d/fgpu.conf",
                  f"listen = {lab.gw_ip}:{PORT}\nlogin_server = {lab.world.state['fgpu_url']}\n"
                  f"hostname = gateway\nallow_identities = {lab.world.nodes['mac'].login_name()}\n")
    gw.run("tsproxy check && systemctl daemon-reload")
    plan = gw.run("tsproxy migrate fgpu").stdout
    assert f"tsproxy migrate fgpu --state-from {seed.STATE_DIR}  (" in plan, plan
    moved = gw.run(f"tsproxy migrate fgpu --stop --state-from {seed.STATE_DIR}")
    print(moved.stdout)
    gw.run("systemctl start tsproxy@fgpu")
    after = wait_for(lambda: (n := node(lab, "/run/tsproxy/fgpu/tailscaled.sock"))["state"]
                     == "Running" and n, 60, what="tsproxy's fgpu node running")
    print(f"node before: {before}\nnode after:  {after}")
    assert after == before

    # The mac, with the setup it had, reaches fgpu's web peer through tsproxy.
    done = lab.world.nodes["mac"].exec(
        ["curl", "-sS", "-m", "15", "-x", f"socks5h://{lab.gw_ip}:{PORT}", "http://web.fgpu:3000/"],
        check=False, timeout=30)
    assert (done.returncode, done.stdout) == (0, WEB_PAGE), done.stderr
