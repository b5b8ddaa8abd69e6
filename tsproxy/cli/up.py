"""`tsproxy up NAME`: ExecStart of tsproxy@NAME.service, the instance's network."""

from __future__ import annotations

import argparse
import sys

from .. import netns
from ..instances import get_instance


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="the instance: NAME of /etc/tsproxy.d/NAME.conf")


def run(args: argparse.Namespace) -> int:
    netns.require_root("up")
    for warning in netns.up(get_instance(args.name)):
        print(f"tsproxy: warning: {warning}", file=sys.stderr)
    return 0
