"""`tsproxy check [FILE...]`: judge confs exactly as the generator does at boot."""

from __future__ import annotations

import argparse
import errno
import socket
import sys

from tsproxy_generator.addresses import Address
from tsproxy_generator.config import conf_paths, load_all
from tsproxy_generator.model import TailnetConf

from ..instances import conf_dir


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="*", metavar="FILE",
                        help="confs to check (default: every *.conf in /etc/tsproxy.d)")


def run(args: argparse.Namespace) -> int:
    paths = args.files or conf_paths(conf_dir())
    if not paths:
        print(f"no confs in {conf_dir()}")
        return 0
    good, errors = load_all(paths)
    for conf in good:
        print(f"{conf.path}: ok: listen {conf.listen}, suffix .{conf.suffix}, "
              f"netns {conf.netns}, veth {conf.veth_subnet}"
              f"{'' if conf.autostart else ', no autostart'}")
    for warning in (w for conf in good for w in warnings(conf)):
        print(warning, file=sys.stderr)
    for error in errors:
        print(error, file=sys.stderr)
    return 1 if errors else 0


def warnings(conf: TailnetConf) -> list[str]:
    """What works but may surprise: an address the host does not have (yet). The sockets
    bind anyway (FreeBind), and serve once the host's own tailscale brings it up."""
    found = []
    for key, listen in (("listen", conf.listen), ("dns_listen", conf.dns_listen)):
        if listen is None or (key == "dns_listen" and listen.address == conf.listen.address):
            continue
        if not is_local(listen.address):
            found.append(f"{conf.path}: {key}: {listen.address} is not an address of this host "
                         "yet (tsproxy starts anyway, FreeBind); is the primary tailscale up? "
                         f"see tailscale ip -{listen.address.version}")
            break  # one line per conf says it
    return found


def is_local(address: Address) -> bool:
    """Whether the host has `address`: only then does a plain bind() to it succeed."""
    if address.is_unspecified:
        return True
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((str(address), 0))
        except OSError as error:
            return error.errno != errno.EADDRNOTAVAIL
    return True
