"""`tsproxy tailscale NAME ARGS...`: the official `tailscale` CLI aimed at the instance's
tailscaled, e.g. `tsproxy tailscale fgpu status`, `... ping 100.64.0.7`, `... lock sign`.

The CLI replaces tsproxy (exec), so its exit status, prompts and Ctrl-C are its own. It
reaches tailscaled through the instance's socket, and as root it also runs inside the
instance's namespace: some subcommands use the network themselves (netcheck sends its own
STUN probes and asks the router for port mappings) and must see the instance's network, not
the host's. Another user cannot enter the namespace, but tailscaled still answers it
read-only (status, ip, whois) over the socket, from the host's namespace.
"""

from __future__ import annotations

import argparse
import os

from ..errors import TsproxyError
from ..instances import get_instance
from ..tailscale import cli
from .exec import inside, replace_with

# Subcommands whose answer is about the network the CLI itself runs in.
NEEDS_NAMESPACE = ("netcheck",)


def register(parser: argparse.ArgumentParser) -> None:
    parser.usage = "tsproxy tailscale [-h] NAME [ARGS ...]"
    parser.add_argument("name", metavar="NAME", help="instance (the conf's file name)")
    parser.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS",
                        help="tailscale's subcommand and its flags, e.g. status --json")


def run(args: argparse.Namespace) -> int:
    conf = get_instance(args.name)
    tailscale = [*cli(conf), *args.args]
    if os.geteuid() == 0:
        replace_with([*inside(conf), *tailscale])
    subcommand = next((word for word in args.args if not word.startswith("-")), None)
    if subcommand in NEEDS_NAMESPACE:
        raise TsproxyError(f"tsproxy tailscale {conf.name} {subcommand} must run as root: it "
                           "probes the network from inside the instance's namespace")
    replace_with(tailscale)
