"""One proxy process: builds the server from a conf and runs it until SIGTERM, with the
relays of the conf's UDP forwards and of SOCKS5 UDP ASSOCIATE beside it.

SIGTERM drains: no new connection is taken (they wait in systemd's socket for the next
process), the ones in flight get DRAIN_GRACE seconds, then the rest are cut and it exits 0.
UDP relays stop at once: their datagrams wait for the next process too, and the UDP
ASSOCIATE connections close (UDP has nothing in flight worth waiting for).

SIGHUP reads the conf and the users file again and applies what can change under running
connections (reconfigure.py). The counters file is written every few seconds and once more on
the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import resource
import signal
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tsproxy_generator.addresses import endpoint
from tsproxy_generator.model import Forward, Listen, TailnetConf
from tsproxy_generator.vocabulary import PROXY_RELOAD_VERDICT

from .. import metrics, pac, page
from ..instances import load_instances, tailscaled_socket
from ..localapi import LocalAPI
from ..names import Resolver
from ..proto.http_connect import PAGE_PATH
from .access import ClientNetworks, Identities, Users
from .associate import UdpAssociate
from .datagrams import DatagramRelay, UdpForward
from .egress import DEVICE, DIAL_TIMEOUT, Dialer, Policy, tune
from .limits import Limits
from .pipes import PipePool
from .reconfigure import Reloader
from .relay import IDLE_TIMEOUT
from .server import HANDSHAKE_TIMEOUT, Server
from .stats import Stats, StatsFile, log_line

# Descriptors: a tunnel holds its client and upstream sockets; a direction moving bytes also
# holds a pipe (two more) until it drains, so a tunnel busy both ways holds six. Short of
# pipes, a relay waits for one (relay.PIPE_RETRY) instead of failing: sockets are the need,
# pipes the wish. The rest: stdio, the listener, LocalAPI calls, pooled idle pipes
# (pipes.POOL_MAX of them), the egress probes.
FDS_PER_CONNECTION = 2
FDS_PER_BUSY_CONNECTION = 6
FD_HEADROOM = 256
# Seconds a stopping proxy (SIGTERM: a restart on upgrade, say) lets the connections in flight
# end by themselves before cutting them: a request finishes, a long download or an ssh session
# through the proxy is cut. TimeoutStopSec= in tsproxy-socks@.service leaves room for it.
DRAIN_GRACE = 5.0


def fds_needed(max_connections: int, busy: bool = False) -> int:
    """Descriptors for max_connections open tunnels (busy: all moving bytes both ways)."""
    per = FDS_PER_BUSY_CONNECTION if busy else FDS_PER_CONNECTION
    return max_connections * per + FD_HEADROOM


@dataclass(frozen=True)
class Options:
    stats_path: str | None = None
    device: str = DEVICE  # the tailnet's interface inside the namespace
    names_socket: str | None = None  # default: the instance's tailscaled socket
    handshake_timeout: float = HANDSHAKE_TIMEOUT
    dial_timeout: float = DIAL_TIMEOUT
    idle_timeout: float = IDLE_TIMEOUT
    drain_grace: float = DRAIN_GRACE


def raise_fd_limit(wanted: int) -> int:
    """Raise the soft RLIMIT_NOFILE up to the hard one (systemd leaves the soft one at 1024
    for select()'s sake; epoll has no such limit). Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard == resource.RLIM_INFINITY else min(hard, max(soft, wanted))
    if target > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return soft


Forwards = Sequence[tuple[socket.socket, Forward]]  # each forward's socket


def build(conf: TailnetConf, listener: socket.socket, options: Options,
          forwards: Forwards = ()) -> Server:
    users = Users.load(conf.users_file) if conf.users_file else None
    identities = (Identities(conf.allow_identities, LocalAPI(conf.identity_socket))
                  if conf.allow_identities else None)
    names = LocalAPI(options.names_socket or tailscaled_socket(conf.name))
    stats = Stats(conf.name, endpoint(*listener.getsockname()[:2]))
    # Accepted sockets inherit NODELAY and keepalive: no syscalls per accept.
    for sock in (listener, *(sock for sock, f in forwards if f.protocol == "tcp")):
        tune(sock)
    server = Server(
        listener,
        resolver=Resolver(conf.suffix, names),
        dial=Dialer(options.device, options.dial_timeout),
        policy=Policy(conf.veth_subnet, conf.allow_egress),
        networks=ClientNetworks(conf.allow_clients),
        users=users,
        identities=identities,
        caps=Limits(conf.max_connections, conf.max_connections_per_client),
        stats=stats,
        pool=PipePool(),
        log=log_line,
        handshake_timeout=options.handshake_timeout,
        idle_timeout=options.idle_timeout,
        pac=functools.partial(served_pac, conf),
        metrics=lambda arrival: metrics.scrape(stats, names),
        forwards=[(sock, forward) for sock, forward in forwards if forward.protocol == "tcp"],
    )
    # The status page is one more resource of the proxy's own, under the PAC's checks.
    server.local[PAGE_PATH] = lambda arrival: page.served(conf, stats, names)
    return server


def datagram_relays(server: Server, forwards: Forwards, options: Options,
                    associate: socket.socket | None = None) -> list[DatagramRelay]:
    """The UDP forwards' relays, with the server's checks, caps and counters, and UDP
    ASSOCIATE's on the `associate` socket (handed to the server, which gives it the
    associations)."""
    dialer = Dialer(options.device, options.dial_timeout)
    relays: list[DatagramRelay] = [
        UdpForward(sock, forward, resolver=server.resolver, dial=dialer.datagram,
                   policy=server.policy, networks=server.networks,
                   identities=server.identities, caps=server.caps, stats=server.stats,
                   log=server.log)
        for sock, forward in forwards if forward.protocol == "udp"]
    if associate is not None:
        server.udp = UdpAssociate(associate, resolver=server.resolver, dialer=dialer,
                                  policy=server.policy, stats=server.stats, log=server.log)
        relays.append(server.udp)
    return relays


def served_pac(conf: TailnetConf, arrival: Listen) -> str:
    """/proxy.pac from every good conf as they are now, this instance at `arrival`."""
    return pac.served(load_instances()[0], conf, arrival)


def run(conf: TailnetConf, listener: socket.socket, options: Options,
        forwards: Forwards = (), associate: socket.socket | None = None,
        reread: Callable[[], TailnetConf] | None = None) -> int:
    """Serve until stopped: `associate` is the datagram socket of SOCKS5 UDP ASSOCIATE (None:
    not handed over), `reread` reads the conf again on SIGHUP (default: the same)."""
    server = build(conf, listener, options, forwards)
    relays = datagram_relays(server, forwards, options, associate)
    limit = raise_fd_limit(fds_needed(conf.max_connections, busy=True))
    notes = [f"egress via {options.device}", f"names .{conf.suffix}",
             f"logins {len(server.users)}" if server.users is not None else "no login",
             f"identities {','.join(conf.allow_identities)}" if server.identities else None,
             f"pipes {server.pool.size // 1024} KiB", f"fd limit {limit}",
             "udp associate" if server.udp else "no udp associate"]
    log_line(f"{conf.name}: proxy listening on {server.stats.listen} "
             f"({', '.join(n for n in notes if n)})")
    for sock, forward in forwards:
        log_line(f"{conf.name}: forwarding {endpoint(*sock.getsockname()[:2])}/"
                 f"{forward.protocol} to {forward.target}")
    if limit < fds_needed(conf.max_connections):
        log_line(f"{conf.name}: warning: fd limit {limit} is below the "
                 f"{fds_needed(conf.max_connections)} that max_connections = "
                 f"{conf.max_connections} needs (the unit's LimitNOFILE= is capped by the "
                 "hard limit systemd has); past it, new connections wait or are refused")
    try:
        verdict = (os.path.join(os.path.dirname(options.stats_path), PROXY_RELOAD_VERDICT)
                   if options.stats_path else None)
        reloader = Reloader(conf, reread or (lambda: conf), server, relays, verdict)
        asyncio.run(_main(conf, server, relays, options, reloader))
    finally:
        server.pool.clear()
        log_line.flush()
    return 0


async def _main(conf: TailnetConf, server: Server, relays: list[DatagramRelay],
                options: Options, reloader: Reloader) -> None:
    loop = asyncio.get_running_loop()
    serving = asyncio.ensure_future(_serve(server, relays))
    draining: list[asyncio.Task[None]] = []

    def stop() -> None:
        # The first signal drains, a second one cuts every connection at once.
        if draining:
            serving.cancel()
        else:
            draining.append(asyncio.ensure_future(_drain(conf, server, relays, serving,
                                                         options.drain_grace)))

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop)
    loop.add_signal_handler(signal.SIGHUP, reloader)
    stats_file = StatsFile(server.stats, options.stats_path) if options.stats_path else None
    writer = asyncio.ensure_future(stats_file.run()) if stats_file else None
    try:
        await serving
    except asyncio.CancelledError:
        log_line(f"{conf.name}: stopped")
    finally:
        if writer is not None:
            writer.cancel()
        if stats_file is not None:
            with contextlib.suppress(OSError):
                stats_file.write()


async def _serve(server: Server, relays: list[DatagramRelay]) -> None:
    """The server and the UDP relays, until cancelled: then all of them end."""
    async with asyncio.TaskGroup() as group:
        for relay in relays:
            group.create_task(relay.serve())
        await server.serve()


async def _drain(conf: TailnetConf, server: Server, relays: list[DatagramRelay],
                 serving: asyncio.Future[None], grace: float) -> None:
    # UDP has no connection to finish: the next process takes the next datagram.
    for relay in relays:
        relay.stop()
    log_line(f"{conf.name}: stopping: no new connections; {server.stats.active} open, "
             f"given up to {grace:g} s to end")
    left = await server.drain(grace)
    if left:
        log_line(f"{conf.name}: cutting {left} connection(s) still open after {grace:g} s")
    serving.cancel()
