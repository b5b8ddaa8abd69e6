"""The accept loop and one task per connection: access, handshake, name, egress, dial, relay.

The server owns raw non-blocking sockets: the handshake uses loop.sock_recv and plain sends
and the relay splices between the sockets themselves, which asyncio's transports would
forbid. Accepting is accepting.py's, in batches, resting a moment when the process runs out
of descriptors.

The path of a connection is kept short, because on a small machine the proxy's own CPU time
per connection is what limits new connections per second: the event loop is looked up once
(asyncio.get_running_loop() costs a getpid() each time), IP literals skip the resolver,
replies are sent without a wait when the socket takes them (it always has room for a few
bytes), and a dial that is complete when connect() returns is not waited for.

Every connection ends in exactly one log line and one counter (stats.Record).

The HTTP requests the proxy answers itself, `GET /proxy.pac` and `GET /metrics`, pass the
same client checks as a tunnel except the login (browsers fetch their PAC, and Prometheus
scrapes, without proxy credentials); the text comes from an injected function, given the
address the request arrived on.

A TCP forward (`forward = PORT=HOST:PORT`) is one more listening socket whose connections skip
the handshake: the forward names the target, and the same checks, names, egress policy,
caps, relay, log line and counters apply (no login: a forward cannot ask for one). A UDP
ASSOCIATE passes every check a CONNECT does; then associate.py relays its datagrams.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import traceback
from collections.abc import Awaitable, Callable, Sequence
from http import HTTPStatus

from tsproxy_generator.addresses import Address, endpoint, ip_literal
from tsproxy_generator.model import Forward, Listen

from .. import accepting
from ..names import NameNotFound, ResolveError, Resolver
from ..proto import (
    AssociateRequest,
    HttpConnectHandshake,
    LocalRequest,
    ProtocolError,
    Reply,
    Socks5Handshake,
    sniff,
)
from ..proto.forward import ForwardHandshake
from ..proto.http_connect import METRICS_PATH, PAC_PATH
from . import limits, resources
from .access import ClientNetworks, Identities, Users, client_host
from .associate import UdpAssociate
from .egress import DialError, Policy
from .pipes import PipePool
from .relay import CLOSED, IDLE, IDLE_TIMEOUT, Tunnel
from .stats import Log, Record, Stats

HANDSHAKE_TIMEOUT = 10.0
RECV_SIZE = 16 * 1024  # a handshake is far smaller; more would just be payload
LOG_PAUSES_EVERY = 10.0  # seconds between "accepting paused" lines in a long shortage
DRAIN_POLL = 0.05  # seconds between looks at the open connections while draining

Handshake = Socks5Handshake | HttpConnectHandshake | ForwardHandshake
Dial = Callable[[Sequence[Address], int], Awaitable[socket.socket]]
# (SOCKS reply, HTTP status when not the reply's own, counter, reason for the log)
Refusal = tuple[Reply, HTTPStatus | None, str, str]
# The PAC text for a request that arrived on this address (runs in a thread: it reads confs).
PacSource = Callable[[Listen], str]


class Server:
    def __init__(self, listener: socket.socket, *, resolver: Resolver, dial: Dial,
                 policy: Policy, networks: ClientNetworks, users: Users | None,
                 identities: Identities | None, caps: limits.Limits, stats: Stats,
                 pool: PipePool, log: Log, handshake_timeout: float = HANDSHAKE_TIMEOUT,
                 idle_timeout: float = IDLE_TIMEOUT, pac: PacSource | None = None,
                 metrics: resources.LocalSource | None = None,
                 forwards: Sequence[tuple[socket.socket, Forward]] = ()) -> None:
        self.listener = listener
        # The forward each forward's listening socket serves, by descriptor: a reload
        # changes targets under the same sockets.
        self.forwards = {sock.fileno(): forward for sock, forward in forwards}
        self.listeners = [listener, *(sock for sock, _ in forwards)]
        self._acceptor = accepting.Acceptor([(sock, sock.fileno()) for sock in self.listeners],
                                            self._take, self._paused)
        self.resolver, self.dial, self.policy = resolver, dial, policy
        self.networks, self.users, self.identities = networks, users, identities
        self.caps, self.stats, self.pool, self.log = caps, stats, pool, log
        self.handshake_timeout, self.idle_timeout = handshake_timeout, idle_timeout
        self.local: dict[str, resources.LocalSource] = {}
        if pac is not None:
            self.local[PAC_PATH] = lambda arrival: asyncio.to_thread(pac, arrival)
        if metrics is not None:
            self.local[METRICS_PATH] = metrics
        self.udp: UdpAssociate | None = None  # UDP ASSOCIATE's relay, when it has a socket
        self._loop: asyncio.AbstractEventLoop | None = None
        self._group: asyncio.TaskGroup | None = None
        self._paused_at = -LOG_PAUSES_EVERY
        self._pauses = 0
        self._dropped = 0  # over-cap connections closed without an answer, not yet logged

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "not serving"
        return self._loop

    async def serve(self) -> None:
        """Accept and serve until cancelled; then every connection is closed."""
        self._loop = asyncio.get_running_loop()
        async with asyncio.TaskGroup() as group:
            self._group = group
            self._acceptor.start()
            try:
                await self._loop.create_future()  # forever: the work is in callbacks and tasks
            finally:
                self.stop_accepting()

    def stop_accepting(self) -> None:
        """Take no new connection. Only this process's descriptors of the listening sockets
        are closed: systemd's stay open, so connections that arrive now wait in its backlog
        for the next proxy (a restart on upgrade)."""
        if self._group is not None:
            self._group = None
            self._acceptor.stop()
            for listener in self.listeners:
                listener.close()

    async def drain(self, grace: float) -> int:
        """Stop accepting and give the connections in flight up to `grace` seconds to end by
        themselves; returns how many are still open (the caller cuts them by cancelling)."""
        self.stop_accepting()
        deadline = self.loop.time() + grace
        while self.stats.active and self.loop.time() < deadline:
            await asyncio.sleep(DRAIN_POLL)
        return self.stats.active

    def _take(self, sock: socket.socket, peer: tuple[str, int], listener: int) -> None:
        assert self._group is not None
        self._group.create_task(self._connection(sock, peer, self.forwards.get(listener)))

    def _paused(self, error: OSError) -> None:
        self._pauses += 1
        if self.loop.time() - self._paused_at >= LOG_PAUSES_EVERY:
            self.log(f"accepting paused {self._pauses} time(s) for {accepting.PAUSE:g} s: "
                     f"{error.strerror} ({self.stats.active} connections open)")
            self._paused_at, self._pauses = self.loop.time(), 0

    # -- one connection ----------------------------------------------------------------------

    async def _connection(self, sock: socket.socket, peer: tuple[str, int],
                          forward: Forward | None) -> None:
        loop = self.loop
        host = client_host(peer[0])
        record = Record(endpoint(host, peer[1]), loop.time())
        over_cap = self.caps.admit(host)
        if over_cap is not None and not self.caps.start_refusal():
            self._drop(sock)
            return
        self.stats.opened()
        try:
            sock.setblocking(False)
            await self._serve(sock, host, record, over_cap, forward)
        except asyncio.CancelledError:
            record.end("shutdown", "proxy shutting down")
            raise
        except Exception as error:  # a bug costs this connection, never the proxy
            record.end("error", f"internal error: {error!r}")
            self.log("".join(traceback.format_exception(error)).rstrip())
        finally:
            sock.close()
            if over_cap is None:
                self.caps.release(host)
            else:
                self.caps.end_refusal()
            self.stats.closed(record)
            self.log(record.line(loop.time()))

    def _drop(self, sock: socket.socket) -> None:
        """A flood beyond the caps and the refusals in progress: close without a word."""
        sock.close()
        self.stats.total += 1
        self.stats.ended["dropped"] = self.stats.ended.get("dropped", 0) + 1
        self.stats.changes += 1
        if not self._dropped:
            self.loop.call_later(1.0, self._log_dropped)
        self._dropped += 1

    def _log_dropped(self) -> None:
        self.log(f"closed {self._dropped} connection(s) without an answer: over the caps "
                 f"with {limits.REFUSING_MAX} refusals already in progress")
        self._dropped = 0

    async def _serve(self, sock: socket.socket, host: str, record: Record,
                     over_cap: str | None, forward: Forward | None) -> None:
        # Access is decided before the handshake, so a refused client is never asked for a
        # password: a login answer would tell it whether the password was right.
        denied = self._cap_refusal(over_cap) or self._network_refusal(host)
        if denied is None and self.identities is not None:
            identity = await self.identities.check(host)
            record.identity = identity.name
            if not identity.allowed:
                denied = (Reply.NOT_ALLOWED, None, "identity", identity.reason)
        hs: Handshake | None
        if forward is not None:
            record.protocol = "forward"
            hs = ForwardHandshake(forward)
        else:
            # An empty users file still means "log in": then nobody can.
            authenticate = (self.users.authenticate if self.users is not None and
                            denied is None else None)
            hs = await self._handshake(sock, record, authenticate)
            if hs is None:
                return
            self.stats.handshakes.observe(self.loop.time() - record.started)
        request = hs.event
        if isinstance(request, LocalRequest):
            await self._serve_local(sock, hs, request, record, denied)
            return
        assert request is not None
        record.user = request.user
        if isinstance(request, AssociateRequest):
            record.command = "udp"  # its address is where the client sends from, no target
        else:
            record.target = endpoint(request.host, request.port)
        if denied is not None:
            code, status, kind, reason = denied
            await self._refuse(sock, hs, record, code, kind, reason, status)
            return
        if isinstance(request, AssociateRequest):
            await self._associate(sock, host, hs, record, request.port)
            return
        literal = ip_literal(request.host)
        addresses = [literal] if literal else await self._resolve(sock, hs, record, request.host)
        if not addresses:
            return
        allowed = self.policy.allowed(addresses)
        if not allowed:
            await self._refuse(sock, hs, record, Reply.NOT_ALLOWED, "egress",
                               self.policy.refusal(addresses))
            return
        dialing = self.loop.time()
        try:
            upstream = await self.dial(allowed, request.port)
        except DialError as error:
            self.stats.dials.observe(self.loop.time() - dialing)
            await self._refuse(sock, hs, record, error.reply, _dial_kind(error.reply),
                               f"dial failed: {error.reason}")
            return
        self.stats.dials.observe(self.loop.time() - dialing)
        try:
            await self._relay(sock, upstream, hs, record)
        finally:
            upstream.close()

    async def _associate(self, sock: socket.socket, host: str, hs: Handshake, record: Record,
                         port: int) -> None:
        if self.udp is None:  # a socket unit from before UDP ASSOCIATE
            await self._refuse(sock, hs, record, Reply.COMMAND_NOT_SUPPORTED, "udp",
                               "UDP ASSOCIATE: no datagram socket on the proxy's port")
            return
        local = sock.getsockname()  # the datagram socket has the same address and port
        await self.udp.hold(sock, host, port, record,
                            hs.reply(Reply.SUCCEEDED, (client_host(local[0]), local[1])))

    def _cap_refusal(self, over_cap: str | None) -> Refusal | None:
        if over_cap is None:
            return None
        code = Reply.GENERAL_FAILURE if over_cap == limits.GLOBAL else Reply.NOT_ALLOWED
        return (code, HTTPStatus.SERVICE_UNAVAILABLE, "caps", over_cap)

    def _network_refusal(self, host: str) -> Refusal | None:
        if self.networks.allows(host):
            return None
        return (Reply.NOT_ALLOWED, None, "client", "client address not in allow_clients")

    async def _handshake(self, sock: socket.socket, record: Record,
                         authenticate: Callable[[str, str], bool] | None) -> Handshake | None:
        loop = self.loop
        try:
            async with asyncio.timeout(self.handshake_timeout):
                data = await loop.sock_recv(sock, RECV_SIZE)
                if not data:
                    record.end("refused: bad handshake",
                               "bad handshake: closed before sending anything")
                    return None
                protocol = sniff(data[0])
                if protocol is None:
                    record.end("refused: bad handshake", f"bad handshake: not SOCKS5 or HTTP "
                                                         f"(first byte 0x{data[0]:02x})")
                    return None
                record.protocol = protocol
                hs = (Socks5Handshake(authenticate) if protocol == "socks5"
                      else HttpConnectHandshake(authenticate))
                while True:
                    if out := hs.receive_data(data):
                        await self._send(sock, out)
                    if hs.event is not None:
                        return hs
                    data = await loop.sock_recv(sock, RECV_SIZE)
        except TimeoutError:
            record.end("refused: handshake timeout", f"handshake timeout: not complete "
                                                     f"within {self.handshake_timeout:g} s")
        except ProtocolError as error:
            _send_now(sock, error.reply)
            kind = error.kind.value
            record.end(f"refused: {kind}", f"{kind}: {error.reason}")
        except OSError as error:
            record.end("refused: bad handshake",
                       f"bad handshake: {error.strerror} mid-handshake")
        return None

    async def _serve_local(self, sock: socket.socket, hs: Handshake, request: LocalRequest,
                           record: Record, denied: Refusal | None) -> None:
        what, name = f"{request.method} {request.path}", resources.NAMES[request.path]
        if denied is not None:
            code, status, kind, reason = denied
            await self._refuse(sock, hs, record, code, kind, f"{what}: {reason}", status)
            return
        reply, kind, outcome = await resources.answer(self.local, request, sock)
        try:
            await self._send(sock, reply)
        except OSError as error:
            record.end(f"{name} error", f"{what}: {error.strerror} while answering")
            return
        record.down = len(reply)
        record.end(kind, outcome)

    async def _resolve(self, sock: socket.socket, hs: Handshake, record: Record,
                       host: str) -> list[Address]:
        try:
            # A.B.C.D.SUFFIX needs no daemon, and no await.
            return self.resolver.resolve_now(host) or await self.resolver.resolve(host)
        except NameNotFound as error:
            await self._refuse(sock, hs, record, Reply.HOST_UNREACHABLE, "name", str(error))
        except ResolveError as error:
            await self._refuse(sock, hs, record, Reply.GENERAL_FAILURE, "name", str(error))
        return []

    async def _refuse(self, sock: socket.socket, hs: Handshake, record: Record, code: Reply,
                      kind: str, reason: str, status: HTTPStatus | None = None) -> None:
        """The final reply saying why not, then close (the caller does)."""
        reply, answer = hs.refusal(code, status)
        with contextlib.suppress(OSError):  # the client is gone; the log still says why
            await self._send(sock, reply)
        record.end(f"refused: {kind}", f"refused ({answer}): {reason}")

    async def _relay(self, sock: socket.socket, upstream: socket.socket, hs: Handshake,
                     record: Record) -> None:
        try:
            bound = upstream.getsockname()
            record.address = endpoint(*upstream.getpeername()[:2])
            await self._send(sock, hs.reply(Reply.SUCCEEDED, bound[:2]))
            if hs.leftover:  # pipelined by the client right behind its request
                await self._send(upstream, hs.leftover)
                record.up += len(hs.leftover)
        except OSError as error:
            record.end("relay error", f"{error.strerror} before relaying")
            return
        tunnel = Tunnel(self.loop, sock, upstream, self.pool, self.idle_timeout)
        self.stats.tunnels += 1
        try:
            outcome = await tunnel.start()
        finally:
            tunnel.close("proxy shutting down")
            self.stats.tunnels -= 1
            record.up += tunnel.bytes_up
            record.down += tunnel.bytes_down
        record.end(outcome if outcome in (CLOSED, IDLE) else "relay error", outcome)

    async def _send(self, sock: socket.socket, data: bytes) -> None:
        # Handshake answers are a few bytes and fit at once; only the rest waits.
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        if sent < len(data):
            await self.loop.sock_sendall(sock, data[sent:])


def _dial_kind(reply: Reply) -> str:
    return {Reply.CONNECTION_REFUSED: "dial refused", Reply.TTL_EXPIRED: "dial timeout",
            Reply.NETWORK_UNREACHABLE: "dial unreachable", Reply.HOST_UNREACHABLE:
            "dial unreachable", Reply.NOT_ALLOWED: "dial forbidden"}.get(reply, "dial error")


def _send_now(sock: socket.socket, data: bytes) -> None:
    """A last answer before closing, if the socket takes it at once; a client that cannot
    take a few bytes is not waited for."""
    if data:
        with contextlib.suppress(OSError):
            sock.send(data)
