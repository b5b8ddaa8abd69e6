"""A replica of the hand-made setup tsproxy replaces (the user's original README): the same
unit names and commands, for `tsproxy migrate`'s unit tests (as files) and its booted
system test (as running units). CoreDNS is a stand-in that only holds port 53; it is
called coredns, as the seed's binary is, so it shows as coredns in /proc.
"""

from __future__ import annotations

HOST_TS_IP = "100.121.76.21"
NETNS = "tsFGPU"
STATE_DIR = "/var/lib/tailscale-tsFGPU"
SOCKET = "/run/tailscale-tsFGPU/tailscaled.sock"
SETUP_SCRIPT = "/usr/local/sbin/setup-ts-netns.sh"
COREDNS = "/usr/local/bin/coredns"
MICROSOCKS = "/usr/local/bin/microsocks"


def files(script: str = SETUP_SCRIPT, listen_ip: str = HOST_TS_IP,
          state_flags: str = f"--statedir={STATE_DIR}") -> dict[str, str]:
    """Unit file name -> text, plus the scripts they run, by path (`script` may be moved
    for tests that cannot write /usr/local)."""
    return {
        "ts-netns.service": f"""[Unit]
Description=Network namespace {NETNS} and its veth pair
After=network-online.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart={script}

[Install]
WantedBy=multi-user.target
""",
        "tailscaled-tsFGPU.service": f"""[Unit]
Description=Tailscale daemon in namespace {NETNS}
Requires=ts-netns.service
After=ts-netns.service

[Service]
Environment=TS_NO_LOGS_NO_SUPPORT=true
ExecStartPre=/bin/mkdir -p /run/tailscale-tsFGPU
ExecStart=/usr/bin/ip netns exec {NETNS} /usr/sbin/tailscaled {state_flags} \\
    --socket={SOCKET} --tun=tailscale0
Restart=on-failure

[Install]
WantedBy=multi-user.target
""",
        "socks-tsFGPU.service": f"""[Unit]
Description=SOCKS5 proxy inside {NETNS}
Requires=tailscaled-tsFGPU.service
After=tailscaled-tsFGPU.service

[Service]
ExecStart=/usr/bin/ip netns exec {NETNS} {MICROSOCKS} -i 10.200.0.6 -p 1080
Restart=always

[Install]
WantedBy=multi-user.target
""",
        "expose-socks-tsFGPU.service": f"""[Unit]
Description=Expose the {NETNS} SOCKS proxy on the host's tailnet address
After=socks-tsFGPU.service

[Service]
ExecStart=/usr/bin/socat TCP-LISTEN:11080,bind={listen_ip},reuseaddr,fork TCP:10.200.0.6:1080
Restart=always

[Install]
WantedBy=multi-user.target
""",
        "coredns-fgpu.service": f"""[Unit]
Description=CoreDNS for .fgpu names
After=network-online.target

[Service]
ExecStart={COREDNS} -conf /etc/coredns/Corefile
Restart=always

[Install]
WantedBy=multi-user.target
""",
    }


SETUP = f"""#!/bin/bash
# The seed's setup-ts-netns.sh: namespace, veth pair, addresses, default route.
set -e
ip netns add {NETNS}
ip link add veth-fgpu-host type veth peer name veth-fgpu-ns
ip link set veth-fgpu-ns netns {NETNS}
ip addr add 10.200.0.5/30 dev veth-fgpu-host
ip link set veth-fgpu-host up
ip -n {NETNS} addr add 10.200.0.6/30 dev veth-fgpu-ns
ip -n {NETNS} link set veth-fgpu-ns up
ip -n {NETNS} link set lo up
ip -n {NETNS} route add default via 10.200.0.5
# Its tailscaled reaches control and DERP through the host's uplink.
sysctl -qw net.ipv4.ip_forward=1
nft add table ip ts-netns
nft add chain ip ts-netns postrouting '{{ type nat hook postrouting priority srcnat; }}'
nft add rule ip ts-netns postrouting ip saddr 10.200.0.4/30 masquerade
"""



def stand_in(listen_ip: str = HOST_TS_IP) -> str:
    """A stand-in for a binary the test image lacks, installed as COREDNS, MICROSOCKS or
    socat: it holds the ports the real one would (its name says which) and answers nothing."""
    return f"""#!/usr/bin/python3
import os, signal, socket, sys
HOLDS = {{"coredns": [("{listen_ip}", 53, socket.SOCK_DGRAM), ("{listen_ip}", 53, socket.SOCK_STREAM)],
         "socat": [("{listen_ip}", 11080, socket.SOCK_STREAM)],
         "microsocks": [("10.200.0.6", 1080, socket.SOCK_STREAM)]}}
held = []
for host, port, kind in HOLDS[os.path.basename(sys.argv[0])]:
    held.append(socket.socket(socket.AF_INET, kind))
    held[-1].bind((host, port))
    if kind == socket.SOCK_STREAM:
        held[-1].listen()
signal.pause()
"""
