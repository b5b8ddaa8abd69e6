"""`tsproxy proxy NAME`: PLACEHOLDER until the SOCKS5/HTTP proxy lands.

It takes the listening socket from systemd (tsproxy-socks@NAME.socket) so the whole unit
chain can be started and tested, and refuses every connection with a reset and a log
line. It never pretends to proxy.
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import sys

from ..errors import TsproxyError

SD_LISTEN_FDS_START = 3


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="instance (the conf's file name)")


def inherited_listener() -> socket.socket:
    if os.environ.get("LISTEN_PID") != str(os.getpid()) or os.environ.get("LISTEN_FDS") != "1":
        raise TsproxyError("proxy: expects one listening socket from systemd "
                           "(run it through tsproxy-socks@NAME.socket)")
    return socket.socket(fileno=SD_LISTEN_FDS_START)


def run(args: argparse.Namespace) -> int:
    listener = inherited_listener()
    print(f"{args.name}: PLACEHOLDER proxy: the SOCKS5/HTTP proxy is not implemented yet; "
          f"every connection to {listener.getsockname()} is refused", file=sys.stderr, flush=True)
    while True:
        client, peer = listener.accept()
        # SO_LINGER 0: close with RST, so clients see "connection reset", never a proxy.
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        print(f"{args.name}: refused {peer[0]}:{peer[1]} (placeholder proxy)", file=sys.stderr,
              flush=True)
