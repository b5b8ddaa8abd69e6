"""`tsproxy down NAME`: ExecStop of tsproxy@NAME.service, removes what `up` made.

Works from the name alone: by the time a unit stops, its conf may be deleted or broken.
"""

from __future__ import annotations

import argparse

from .. import netns
from ..instances import checked_name


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="the instance: NAME of /etc/tsproxy.d/NAME.conf")


def run(args: argparse.Namespace) -> int:
    checked_name(args.name)
    netns.require_root("down")
    netns.down(args.name)
    return 0
