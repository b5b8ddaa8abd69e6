#!/usr/bin/python3
"""`make demo`: the package in a throwaway booted Debian 12, one tailnet started, and a
tour of what runs where. Nothing outside the container is touched; it is deleted at the end.

(Until the lab issue lands there is no control server, so the instance's tailscaled waits
at NeedsLogin and the proxy has no tailnet to reach: it answers, and refuses, as it should.)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "system"))

import gateway  # noqa: E402
import images  # noqa: E402
import nspawn  # noqa: E402

CONF = f"listen = {gateway.HOST_TS_IP}:11080\n"
TOUR = [
    ("the conf", "cat /etc/tsproxy.d/fgpu.conf && tsproxy check"),
    ("what the generator made of it", "find /run/systemd/generator -path '*tsproxy*' | sort"),
    ("start it", "time systemctl start tsproxy@fgpu"),
    ("the units", "systemctl list-units --no-pager --all 'tsproxy*'"),
    ("namespace and veth", "ip netns list; ip -br addr show dev ts-fgpu; "
                           "ip -n ts-fgpu -br addr; ip -n ts-fgpu route"),
    ("tsproxy's own nftables table (nothing else in the ruleset is touched)",
     "nft list table inet tsproxy-fgpu"),
    ("the official tailscaled, inside the namespace",
     "ps -o pid,args -C tailscaled; ip netns identify $(systemctl show -P MainPID "
     "tsproxy-tailscaled@fgpu); tailscale --socket=/run/tsproxy/fgpu/tailscaled.sock status"
     " || true"),
    ("the namespace's resolv.conf (the host's is untouched)", "cat /etc/netns/ts-fgpu/resolv.conf"),
    ("egress through NAT, as the fake internet sees it",
     f"ip netns exec ts-fgpu curl -sS -m 5 http://{gateway.INTERNET}:8080/; echo"),
    ("the proxy socket, listening in the host namespace", "ss -ltnp | grep 11080"),
    ("the proxy answers (and refuses: 127.0.0.1.fgpu would be the gateway's own loopback)",
     f"curl -sS -m 5 -x socks5h://{gateway.HOST_TS_IP}:11080 http://127.0.0.1.fgpu/; "
     "sleep 0.5; journalctl -u tsproxy-socks@fgpu --no-pager -o cat | tail -3; "
     "cat /run/tsproxy-socks/fgpu/stats.json; echo"),
    ("stop: everything start made is gone",
     "systemctl stop tsproxy@fgpu; ip netns list; nft list tables; ip -br link"),
]


def main() -> int:
    tailscale_deb = subprocess.run([str(HERE / "tailscale/build-deb"), "/tmp"], check=True,
                                   capture_output=True, text=True).stdout.split()[-1]
    with nspawn.Container.from_image(images.ensure_base_image()) as container:
        container.boot()
        container.wait_running()
        gateway.bring_up_network(container)
        gateway.install(container, Path(tailscale_deb), {"fgpu.conf": CONF})
        container.run("systemctl daemon-reload")
        for title, command in TOUR:
            result = container.run(["bash", "-c", command], check=False)
            print(f"\n### {title}\n$ {command}\n{result.stdout}{result.stderr}", end="")
    print("\n(container powered off and deleted)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
