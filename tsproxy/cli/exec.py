"""`tsproxy exec NAME -- CMD...`: run a command inside the instance's namespace, e.g.
`tsproxy exec fgpu -- ping 100.64.0.7`, as the instance's tailscaled and proxy see the network.

The command replaces tsproxy (exec, no child), so its exit status, terminal and signals
are its own. It runs through `ip netns exec`, which also shows it the namespace's files in
/etc/netns/ts-NAME (its resolv.conf), so names resolve there as they do for tailscaled.
"""

from __future__ import annotations

import argparse
import os
import signal
from typing import NoReturn

from tsproxy_generator.model import TailnetConf
from tsproxy_generator.vocabulary import INSTANCE, unit

from ..command import PACKAGES
from ..errors import TsproxyError
from ..instances import get_instance
from ..netns import netns_path, require_root

USAGE = "tsproxy exec [-h] NAME -- CMD [ARG ...]"


def register(parser: argparse.ArgumentParser) -> None:
    parser.usage = USAGE
    parser.add_argument("name", metavar="NAME", help="instance (the conf's file name)")
    parser.epilog = "CMD and its arguments follow --, e.g.: tsproxy exec fgpu -- ip addr"


def parse(parser: argparse.ArgumentParser, words: list[str]) -> argparse.Namespace:
    """NAME, then `--`, then the command, kept word for word (argparse drops a `--` without
    saying whether there was one, so the words after it never reach it)."""
    end = words.index("--") if "--" in words else len(words)
    args, extra = parser.parse_known_args(words[:end])
    args.command = words[end + 1:]
    if extra or not args.command:
        # Without `--`, `tsproxy exec fgpu -h` would be ambiguous: whose -h?
        parser.error(f"give the command to run after --, e.g.: tsproxy exec {args.name} -- ip addr")
    return args


def run(args: argparse.Namespace) -> int:
    conf = get_instance(args.name)
    require_root("exec", "only root may enter an instance's namespace")
    replace_with([*inside(conf), *args.command])


def inside(conf: TailnetConf) -> list[str]:
    """The words that run a command inside the instance's namespace, once it is there."""
    path = netns_path(conf.netns)
    if not os.path.exists(path):
        raise TsproxyError(f"{conf.name}: the instance is not running ({path} is missing); "
                           f"start it with: systemctl start {unit(INSTANCE, conf.name, '')}")
    return ["ip", "netns", "exec", conf.netns]


def replace_with(argv: list[str]) -> NoReturn:
    """Become argv: exit status, stdin, terminal and signals (Ctrl-C) are its own."""
    # Python ignores SIGPIPE and SIGXFSZ, and an ignored signal stays ignored across exec:
    # `tsproxy exec fgpu -- ip monitor | head` must end as the command alone would.
    for number in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(number, signal.SIG_DFL)
    try:
        os.execvp(argv[0], argv)
    except FileNotFoundError:
        raise TsproxyError(f"{argv[0]} not found: install the "
                           f"{PACKAGES.get(argv[0], argv[0])} package") from None
    except OSError as error:
        raise TsproxyError(f"{argv[0]}: {error.strerror}") from None
