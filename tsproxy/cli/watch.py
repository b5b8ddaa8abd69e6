"""`tsproxy watch NAME`: the instance's watchdog (run by tsproxy-watch@NAME.service).

Restarts tsproxy@NAME when its namespace, veth or nft table is deleted or flushed by hand;
see tsproxy/watch.py.
"""

from __future__ import annotations

import argparse

from .. import netns, watch
from ..errors import TsproxyError
from ..instances import checked_name


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="instance (the conf's file name)")
    parser.add_argument("--interval", type=float, default=watch.INTERVAL, metavar="SECONDS",
                        help=f"seconds between looks (default {watch.INTERVAL:g})")


def run(args: argparse.Namespace) -> int:
    # From the name alone, like `down`: what it watches is named after the instance.
    checked_name(args.name)
    if not args.interval > 0:
        raise TsproxyError(f"--interval: {args.interval:g} is not a positive number of seconds")
    netns.require_root("watch", "it reads nftables and restarts units")
    watch.run(args.name, args.interval)
    return 0
