"""`tsproxy COMMAND ...`: one module per command, each with register() and run()."""

from __future__ import annotations

import argparse
import importlib
import sys

from tsproxy_generator.model import ConfigError

from .. import __version__
from ..errors import TsproxyError

# Imported on demand so `tsproxy check` never pays for what `tsproxy proxy` needs.
COMMANDS = {
    "check": "validate every conf, with the generator's messages",
    "doctor": "check every piece of the instances, say how to fix each failure; --fix "
              "runs the safe fixes",
    "list": "list the confs: generated into units, started at boot, running",
    "status": "show every instance's units, tailnet, peers and traffic; exit 0 when healthy",
    "up": "set up an instance's namespace, veth and nftables (run by tsproxy@NAME)",
    "down": "remove what `up` made (run by tsproxy@NAME on stop)",
    "watch": "restart an instance whose namespace or nft table went away (run by "
             "tsproxy-watch@NAME)",
    "login": "log an instance's tailscaled in to its tailnet",
    "logout": "log an instance's tailscaled out of its tailnet",
    "reload": "apply a changed conf to a running instance without dropping connections "
              "(run by systemctl reload tsproxy@NAME)",
    "tailscale": "run the tailscale CLI against an instance's tailscaled (status, ping, "
                 "netcheck, lock sign, set, ...)",
    "exec": "run a command inside an instance's namespace, e.g. ping a peer",
    "proxy": "serve the proxy socket of an instance (run by tsproxy-socks@NAME)",
    "client": "print ready-to-paste setup for client machines (DNS, PAC, ssh, shell)",
    "dns": "answer every instance's DNS names (run by tsproxy-dns.service)",
    "migrate": "move a tailnet from a hand-made setup (socat, CoreDNS, its own tailscaled) "
               "to this instance, keeping its node",
}


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="tsproxy", description="Multi-tailnet gateway.")
    top.add_argument("--version", action="version", version=f"tsproxy {__version__}")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        commands.add_parser(name, help=help_text, description=help_text)
    return top


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    top = parser()
    # Parse the command name first, then let its module add its own arguments.
    command = argv[0] if argv and argv[0] in COMMANDS else None
    if command is None:
        top.parse_args(argv)  # prints usage or help and exits
        return 2
    module = importlib.import_module(f"{__name__}.{command}")
    sub = argparse.ArgumentParser(prog=f"tsproxy {command}", description=COMMANDS[command])
    module.register(sub)
    # A command that runs another (exec) splits its words itself, at `--`.
    args = module.parse(sub, argv[1:]) if hasattr(module, "parse") else sub.parse_args(argv[1:])
    try:
        return int(module.run(args) or 0)
    except (TsproxyError, ConfigError) as error:
        print(f"tsproxy: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
