"""`tsproxy dns`: answer every tailnet's names (run by tsproxy-dns.service).

Under systemd the UDP and TCP sockets come from tsproxy-dns.socket, one pair per distinct
dns_listen of the confs. For tests and benchmarks it also runs standalone: `--listen IP:PORT`
(repeatable) binds UDP and TCP itself.
"""

from __future__ import annotations

import argparse
import socket

from tsproxy_generator import paths

from ..activation import bind, inherited_sockets, parse_listen
from ..dns import service
from ..dns.answer import QUERY_TIMEOUT
from ..errors import TsproxyError


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", metavar="IP:PORT", action="append", default=[],
                        help="bind UDP and TCP here instead of taking sockets from systemd")
    parser.add_argument("--run-dir", metavar="DIR",
                        help=f"where each tailnet's tailscaled socket is, as DIR/NAME/"
                             f"tailscaled.sock (default {paths.RUN_DIR})")
    parser.add_argument("--timeout", type=float, default=QUERY_TIMEOUT, metavar="SECONDS",
                        help=f"SERVFAIL when tailscaled has not answered by then "
                             f"(default {QUERY_TIMEOUT:g} s)")


def run(args: argparse.Namespace) -> int:
    if args.listen:
        sockets = [bind(parse_listen(text), kind) for text in args.listen
                   for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM)]
    else:
        sockets = inherited_sockets()
        if not sockets:
            raise TsproxyError("dns: expects sockets from systemd (run it through "
                               "tsproxy-dns.socket) or --listen IP:PORT")
    return service.run(sockets, args.run_dir, args.timeout)
