"""`tsproxy down NAME`: ExecStop of tsproxy@NAME.service, removes what `up` made.

Works from the name alone: by the time a unit stops, its conf may be deleted or broken.
"""

from __future__ import annotations

import argparse

from tsproxy_generator.config import ConfigError, instance_name

from .. import netns
from ..errors import TsproxyError


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="the instance: NAME of /etc/tsproxy.d/NAME.conf")


def run(args: argparse.Namespace) -> int:
    # The name becomes interface, namespace and path names: only what a conf could be called.
    try:
        instance_name(f"{args.name}.conf")
    except ConfigError as error:
        raise TsproxyError(error.message) from None
    netns.require_root("down")
    netns.down(args.name)
    return 0
