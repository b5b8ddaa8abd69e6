#!/usr/bin/python3
"""`make demo`: the lab of tests/lab, narrated. Two offline tailnets (home and fgpu, each an
in-memory Tailscale control server), real tailscaled everywhere, and the package in a
throwaway booted Debian 12 as the gateway between them. A "mac" on home reaches fgpu's web
server through the gateway's home address. Everything lives in network namespaces and a
container made for the demo, and is gone at the end.

With a terminal on stdin the demo waits before tearing down, so you can look around.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "lab"))

from lab import PORT, Lab, running_lab  # noqa: E402


def show(title: str, where: str, argv: list[str], run: subprocess.CompletedProcess) -> None:
    print(f"\n### {title}\n[{where}]$ {shlex.join(argv)}\n{run.stdout}{run.stderr}", end="")


def tour(lab: Lab) -> None:
    gw, world = lab.gw, lab.world
    mac = world.nodes["mac"]
    print(f"""
What runs where
  this machine, namespace {world.world_ns}: the control servers of tailnet home
      ({world.state['home_url']}, interactive login) and fgpu ({world.state['fgpu_url']},
      auth key), one DERP+STUN relay ({world.state['derp']})
  this machine, namespaces {', '.join(n.ns for n in world.nodes.values())}:
      a tailscaled each: mac and mac2 on home, web (http on :3000) and ssh (sshd) on fgpu
  container {gw.name} (booted Debian 12, the gateway): tailscaled.service on home,
      tsproxy@fgpu (namespace ts-fgpu, its own tailscaled on fgpu), the proxy on {lab.gw_ip}:{PORT},
      DNS on {lab.gw_ip}:53

Tailnet addresses (both tailnets hand out 100.64.0.N: the same address, two different nodes)
  home: gateway {lab.gw_ip}, mac {mac.ip4()}, mac2 {world.nodes['mac2'].ip4()}
  fgpu: web {lab.web_ip}, ssh {lab.ssh_ip}, the gateway's instance {gw_fgpu_ip(lab)}""")
    steps: list[tuple[str, str, list[str]]] = [
        ("the conf", "gateway", ["sh", "-c", "cat /etc/tsproxy.d/fgpu.conf; tsproxy check"]),
        ("the gateway's instance on fgpu", "gateway",
         ["tailscale", "--socket=/run/tsproxy/fgpu/tailscaled.sock", "status"]),
        ("the gateway's own tailnet (home)", "gateway", ["tailscale", "status"]),
        ("from the mac: curl through the gateway, by name", "mac",
         ["curl", "-sS", "-m", "10", "-x", f"socks5h://{lab.gw_ip}:{PORT}", "http://web.fgpu:3000/"]),
        ("from the mac: by fgpu address, with HTTP CONNECT", "mac",
         ["curl", "-sS", "-m", "10", "-p", "-x", f"http://{lab.gw_ip}:{PORT}", f"http://{lab.web_ip}.fgpu:3000/"]),
        ("from the mac: the gateway's DNS", "mac", ["dig", "+short", f"@{lab.gw_ip}", "web.fgpu"]),
        ("from the mac, directly: that address is a home node, not fgpu's web", "mac",
         ["curl", "-sS", "-m", "3", f"http://{lab.web_ip}:3000/"]),
        ("the proxy's log", "gateway", ["journalctl", "-u", "tsproxy-socks@fgpu", "--no-pager", "-o", "cat",
                                        "-n", "4"]),
    ]
    for title, where, argv in steps:
        if where == "mac":
            run = mac.exec(argv, check=False, timeout=30)
        else:
            run = gw.run(argv, check=False)
        show(title, where, argv, run)
    print(f"""
### look around
  a shell in the gateway:   nsenter -t {gw.pid1} -a bash
  a shell on the mac:       ip netns exec {mac.ns} bash
                            (then: curl -x socks5h://{lab.gw_ip}:{PORT} http://web.fgpu:3000/)""")


def gw_fgpu_ip(lab: Lab) -> str:
    return lab.gw.run(["tailscale", "--socket=/run/tsproxy/fgpu/tailscaled.sock", "ip", "-4"],
                      check=False).stdout.strip()


def leftovers(world_id: str, workdir: Path) -> list[str]:
    found = [ns for ns in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
             if ns.startswith(f"tslab-{world_id}-")]
    if workdir.exists():
        found.append(str(workdir))
    procs = subprocess.run(["pgrep", "-f", str(workdir)], capture_output=True, text=True).stdout.split()
    return found + [f"process {pid}" for pid in procs]


def main() -> int:
    started = time.monotonic()
    world_id = "(none)"
    workdir = Path(tempfile.mkdtemp(prefix="tsproxy-demo-", dir="/var/tmp"))
    try:
        with running_lab(workdir) as lab:
            world_id = lab.world.id
            print(f"(the lab came up in {time.monotonic() - started:.0f}s)")
            tour(lab)
            if sys.stdin.isatty():
                input("\nPress Enter to tear everything down... ")
            print("\n### tear down: the container is killed and deleted, the namespaces and processes go")
    finally:
        subprocess.run(["rm", "-rf", str(workdir)])
    left = leftovers(world_id, workdir)
    print("nothing left behind" if not left else f"LEFT BEHIND: {left}")
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main())
