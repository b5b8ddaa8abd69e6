"""`tsproxy proxy NAME`: serve an instance's SOCKS5 + HTTP CONNECT proxy.

Under systemd (tsproxy-socks@NAME.service) the listening socket comes from
tsproxy-socks@NAME.socket, made in the host's namespace, while this process runs inside the
instance's namespace: every outbound connection leaves from there. The same socket unit
holds a datagram socket on the proxy's own address and port (SOCKS5 UDP ASSOCIATE's) and
the conf's forwards, one socket each, after the proxy's own stream socket; they are told
apart by their port and type. For tests and benchmarks it also runs standalone: `--listen
IP:PORT` binds its own sockets (and the forwards' on the same IP), `--conf PATH` reads a
conf from anywhere.
"""

from __future__ import annotations

import argparse
import socket

from tsproxy_generator.config import load
from tsproxy_generator.model import ConfigError, Forward, Listen, TailnetConf

from ..activation import bind, inherited_sockets, parse_listen, runtime_file
from ..errors import TsproxyError
from ..instances import get_instance
from ..proxy import service
from ..proxy.egress import DEVICE, DIAL_TIMEOUT
from ..proxy.relay import IDLE_TIMEOUT
from ..proxy.server import HANDSHAKE_TIMEOUT
from ..proxy.stats import log_line


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="instance (the conf's file name)")
    parser.add_argument("--conf", metavar="PATH",
                        help="read this conf instead of /etc/tsproxy.d/NAME.conf")
    parser.add_argument("--listen", metavar="IP:PORT",
                        help="bind this address instead of taking the socket from systemd")
    parser.add_argument("--stats", metavar="PATH",
                        help="write counters here (default: stats.json in the unit's "
                             "RuntimeDirectory, when there is one)")
    parser.add_argument("--device", default=DEVICE,
                        help=f"the only interface outbound connections may use "
                             f"(default {DEVICE})")
    parser.add_argument("--names-socket", metavar="PATH",
                        help="tailscaled LocalAPI socket for names (default: the instance's)")
    for what, default in (("handshake", HANDSHAKE_TIMEOUT), ("dial", DIAL_TIMEOUT),
                          ("idle", IDLE_TIMEOUT)):
        parser.add_argument(f"--{what}-timeout", type=float, default=default, metavar="SECONDS",
                            help=f"{what} timeout (default {default:g} s)")


def read_conf(args: argparse.Namespace) -> TailnetConf:
    """The instance's conf, at start and again at each reload."""
    if not args.conf:
        return get_instance(args.name)
    try:
        conf = load(args.conf)
    except ConfigError as error:
        raise TsproxyError(str(error)) from None
    if conf.name != args.name:  # the name picks the LocalAPI socket: they must agree
        raise TsproxyError(f"--conf {args.conf} is instance {conf.name!r}, not {args.name!r}")
    return conf


def run(args: argparse.Namespace) -> int:
    conf = read_conf(args)
    if args.listen:
        listen = parse_listen(args.listen)
        listener, forwards = bind(listen), bound_forwards(conf, listen)
        # The port the listener got (--listen IP:0 picks one): UDP ASSOCIATE's is the same.
        port = listener.getsockname()[1]
        associate: socket.socket | None = bind(Listen(listen.address, port), socket.SOCK_DGRAM)
    else:
        listener, associate, forwards = inherited(conf)
    stats = args.stats if args.stats is not None else runtime_file("stats.json")
    options = service.Options(stats_path=stats, device=args.device,
                              names_socket=args.names_socket,
                              handshake_timeout=args.handshake_timeout,
                              dial_timeout=args.dial_timeout, idle_timeout=args.idle_timeout)
    return service.run(conf, listener, options, forwards, associate, lambda: read_conf(args))


KINDS = {"tcp": socket.SOCK_STREAM, "udp": socket.SOCK_DGRAM}


def inherited(conf: TailnetConf) -> tuple[socket.socket, socket.socket | None,
                                          service.Forwards]:
    """The sockets systemd passed (from tsproxy-socks@NAME.socket): the proxy's listening
    socket first, then UDP ASSOCIATE's (the datagram socket on the same port; a unit from
    before it has none) and the forwards' in any order."""
    sockets = inherited_sockets()
    if not sockets:
        raise TsproxyError("proxy: expects its listening socket from systemd (run it through "
                           "tsproxy-socks@NAME.socket) or --listen IP:PORT")
    listener = sockets[0]
    if listener.type != socket.SOCK_STREAM or listener.getsockopt(
            socket.SOL_SOCKET, socket.SO_ACCEPTCONN) != 1:
        raise TsproxyError("proxy: the socket from systemd is not a listening stream socket")
    wanted = {(KINDS[f.protocol], f.port): f for f in conf.forwards}
    forwards: list[tuple[socket.socket, Forward]] = []
    associate = None
    for sock in sockets[1:]:
        if (sock.type, sock.getsockname()[1]) == (socket.SOCK_DGRAM, listener.getsockname()[1]):
            associate = sock
            continue
        forward = wanted.pop((sock.type, sock.getsockname()[1]), None)
        if forward is None:  # the socket unit is older or newer than the conf
            raise TsproxyError(f"proxy: {conf.path} has no forward for the socket on "
                               f"{sock.getsockname()[1]}: systemctl daemon-reload, then "
                               f"systemctl restart tsproxy@{conf.name}")
        forwards.append((sock, forward))
    for forward in wanted.values():
        log_line(f"{conf.name}: forward {forward} has no socket yet: systemctl "
                 f"daemon-reload, then systemctl restart tsproxy@{conf.name}")
    return listener, associate, forwards


def bound_forwards(conf: TailnetConf, listen: Listen) -> service.Forwards:
    """Standalone: each forward's socket, on the --listen address."""
    return [(bind(Listen(listen.address, f.port), KINDS[f.protocol]), f) for f in conf.forwards]
