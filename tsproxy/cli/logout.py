"""`tsproxy logout NAME`: log the instance's tailscaled out of its tailnet (its node key
is given up; `tsproxy login NAME` joins again, as a new node)."""

from __future__ import annotations

import argparse
import subprocess

from ..errors import TsproxyError
from ..instances import get_instance
from ..netns import require_root
from ..tailscale import cli


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="instance (the conf's file name)")


def run(args: argparse.Namespace) -> int:
    conf = get_instance(args.name)
    # tailscaled lets only root (or its operator) change its state.
    require_root("logout", "only root may change tailscaled's login")
    command = [*cli(conf), "logout"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        lines = (done.stderr.strip() or done.stdout.strip()).splitlines()
        raise TsproxyError(f"{conf.name}: tailscale logout failed: "
                           f"{lines[-1] if lines else f'exit status {done.returncode}'}")
    print(f"{conf.name}: logged out; log in again with: tsproxy login {conf.name}")
    return 0
