"""The lab's gateway: a booted Debian 12 container (tests/system/nspawn.py) with tsproxy's
.deb and the lab's tailscale .deb installed, its own tailscaled on home (interactive login),
/etc/tsproxy.d/fgpu.conf on fgpu (authkey_file and login_server), its uplink a veth into the
world of world.py. running_lab() brings up both; the tests and `make demo` use it.

    Lab: .world, .gw (the container), .gw_ip (the gateway's home address),
         .web_ip / .ssh_ip (fgpu addresses), .resolv_before
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "system"))

import gateway  # noqa: E402
import images  # noqa: E402
import labtools  # noqa: E402
from nspawn import Container  # noqa: E402
from world import TS_ENV, World, running_world, wait_for  # noqa: E402

PORT = 11080
WEB_FORWARD, SSH_FORWARD = 13000, 12222  # fgpu's forwards to its web and ssh peers
AUTHKEY_FILE = "/etc/tsproxy.d/fgpu.key"
# The lab's environment for both kinds of tailscaled on the gateway (see world.TS_ENV).
TS_ENV_LINES = "".join(f"Environment={k}={v}\n" for k, v in TS_ENV.items())


@dataclass
class Lab:
    world: World
    gw: Container
    gw_ip: str = ""
    web_ip: str = ""
    ssh_ip: str = ""
    resolv_before: bytes = b""

    def boot(self) -> None:
        """Boot (or reboot) the gateway with its uplink plugged in, as a host boots with its
        network cable in: the veth is there before the container's services start."""
        self.gw.boot()
        self.world.plug(self.gw.pid1)
        self.gw.wait_running()

    def reboot(self) -> None:
        self.gw.run(["systemctl", "reboot", "--no-block"], check=False)
        status = self.gw._wait_exit(90)
        assert status == 133, f"systemd-nspawn exited {status} on reboot"
        self.boot()

    def gw_status(self, sock: str = "/run/tailscale/tailscaled.sock") -> dict:
        out = self.gw.run(["tailscale", f"--socket={sock}", "status", "--json"], check=False).stdout
        return json.loads(out) if out.strip() else {}

    def fgpu_state(self) -> str:
        return self.gw_status("/run/tsproxy/fgpu/tailscaled.sock").get("BackendState", "")


def _login_gateway_home(lab: Lab) -> None:
    """The user's own step on the gateway: join the primary tailnet with the login URL."""
    url = lab.world.state["home_url"]
    lab.gw.run(f"nohup tailscale up --accept-dns=false --hostname=gateway --login-server={url} "
               ">/root/tailscale-up.log 2>&1 &")
    auth = wait_for(lambda: lab.gw_status().get("AuthURL"), 30, what="the gateway's login URL")
    lab.gw.run(["curl", "-fsS", "-m", "10", auth])
    wait_for(lambda: lab.gw_status().get("BackendState") == "Running", 30, what="the gateway on home")


@contextlib.contextmanager
def running_lab(workdir: Path, fgpu: bool = True) -> Iterator[Lab]:
    """The world, and the gateway booted, installed and on both tailnets (about 15 s warm);
    without `fgpu`, on home only, with no conf (the migration test brings its own setup)."""
    started = time.monotonic()
    tailscale_deb = labtools.tailscale_deb(workdir)
    image = images.ensure_base_image(suite="bookworm")
    with running_world(workdir / "world") as world, Container.from_image(image, parent=workdir) as gw:
        lab = Lab(world, gw)
        try:
            lab.boot()
            lab.resolv_before = gw.run(["cat", "/etc/resolv.conf"], text=False).stdout
            gateway.install(gw, tailscale_deb, {})
            gw.write_file("/etc/systemd/system/tailscaled.service.d/lab.conf", f"[Service]\n{TS_ENV_LINES}")
            gw.write_file("/etc/systemd/system/tsproxy-tailscaled@.service.d/lab.conf",
                          f"[Service]\n{TS_ENV_LINES}")
            gw.run("systemctl daemon-reload && systemctl enable --now tailscaled.service")
            _login_gateway_home(lab)
            lab.gw_ip = gw.run(["tailscale", "ip", "-4"]).stdout.strip()
            if not fgpu:
                yield lab
                return
            mac_login = world.nodes["mac"].login_name()
            gw.write_file(AUTHKEY_FILE, world.state["fgpu_authkey"] + "\n", mode=0o600)
            gw.write_file("/etc/tsproxy.d/fgpu.conf",
                          f"# the lab's second tailnet\nlisten = {lab.gw_ip}:{PORT}\n"
                          f"login_server = {world.state['fgpu_url']}\nauthkey_file = {AUTHKEY_FILE}\n"
                          f"hostname = gateway\nallow_identities = {mac_login}\n"
                          f"forward = {WEB_FORWARD}=web.fgpu:3000, {SSH_FORWARD}=ssh.fgpu:22\n")
            gw.run("tsproxy check && systemctl daemon-reload && systemctl start tsproxy@fgpu")
            wait_for(lambda: lab.fgpu_state() == "Running", 60, what="the gateway on fgpu")
            lab.web_ip = world.nodes["web"].ip4()
            lab.ssh_ip = world.nodes["ssh"].ip4()
            print(f"lab up in {time.monotonic() - started:.0f}s: gateway {lab.gw_ip} on home, "
                  f"web {lab.web_ip} and ssh {lab.ssh_ip} on fgpu")
            yield lab
        except BaseException:
            print(gw.debug_dump() if gw.running else "(gateway not running)")
            raise
