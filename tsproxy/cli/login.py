"""`tsproxy login NAME`: join the instance's tailnet, by auth key or by login URL."""

from __future__ import annotations

import argparse
import subprocess
import sys

from ..errors import TsproxyError
from ..instances import get_instance
from ..netns import require_root
from ..tailscale import backend_state, cli, pref_flags, up_flags


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="instance (the conf's file name)")
    parser.add_argument("--authkey-file", metavar="FILE",
                        help="log in with this auth key (default: the conf's authkey_file; "
                             "without one, tailscale prints a login URL to open)")
    parser.add_argument("--unattended", action="store_true",
                        help="as tsproxy-login@NAME.service does: log in with authkey_file "
                             "only when logged out, else just apply the conf's settings")
    parser.add_argument("--timeout", default="5m",
                        help="how long to wait for the login to finish (default 5m)")


def run(args: argparse.Namespace) -> int:
    conf = get_instance(args.name)
    # tailscaled lets only root (or its operator) change its state.
    require_root("login", "only root may change tailscaled's login")
    authkey_file = args.authkey_file or conf.authkey_file
    tailscale = cli(conf)
    if args.unattended:
        if not authkey_file:
            raise TsproxyError(f"{conf.path}: authkey_file: not set, so unattended login is "
                               f"impossible; run: tsproxy login {conf.name}")
        state = backend_state(conf)
        if state == "Running":
            # Already in: keep the node key, apply what the conf may have changed since.
            command = [*tailscale, "set", *pref_flags(conf)]
        else:
            command = [*tailscale, "up", *up_flags(conf, authkey_file), f"--timeout={args.timeout}"]
        print(f"{conf.name}: {state}: running {' '.join(command[1:])}", file=sys.stderr)
    else:
        command = [*tailscale, "up", *up_flags(conf, authkey_file), f"--timeout={args.timeout}"]
    # tailscale prints the login URL and its progress itself: let it talk to the user.
    if subprocess.run(command).returncode != 0:
        raise TsproxyError(f"{conf.name}: tailscale {command[2]} failed (see above)")
    return 0
