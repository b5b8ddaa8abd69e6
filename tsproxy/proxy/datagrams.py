"""UDP forwards (`forward = 5353/udp=HOST:PORT`): datagrams that clients send to a socket in
the host's namespace go to one target inside the tailnet, and the target's answers come back.

Each client (address and port) gets an association: a socket of its own inside the
namespace, bound to tailscale0 and connected to the target as the proxy's TCP dials are,
so the target's answers reach that socket alone and go back to that client. A client's
first datagram is judged as a connection is (the caps, allow_clients, allow_identities),
the target's name resolved then and the address held to the egress policy. The association
lives until IDLE_TIMEOUT seconds pass without a datagram either way, and ends in one log
line and one counter, as a connection does; a refused client's association stays until it
is idle too, so that a stream of its datagrams costs one log line, not one each. Datagrams
that arrive while the first is being judged wait, up to PENDING_MAX of them; UDP promises
no delivery, so what does not fit (a full queue, a full socket buffer) is dropped.

DatagramRelay is what they share with SOCKS5 UDP ASSOCIATE (associate.py): the client-facing
socket read in batches, the sockets inside the namespace read in batches, the idle sweep.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any

from tsproxy_generator.addresses import Address, endpoint
from tsproxy_generator.model import Forward

from ..names import NameNotFound, ResolveError, Resolver
from . import limits
from .access import ClientNetworks, Identities, client_host
from .egress import DialError, Policy
from .relay import IDLE
from .stats import Log, Record, Stats

IDLE_TIMEOUT = 120.0  # as long as conntrack keeps a UDP flow that has seen answers
SWEEP_EVERY = 5.0
PENDING_MAX = 16
DATAGRAM_MAX = 65535
BATCH = 64  # datagrams taken per wakeup, so one busy client cannot starve the others

# A connected datagram socket to the first address that is routed, or DialError.
DialDatagram = Callable[[Sequence[Address], int], socket.socket]
Refusal = tuple[str, str]  # (counter, reason for the log)


class Association:
    """One client's datagrams: `client` is where answers go (as the socket names it)."""

    __slots__ = ("client", "host", "last", "record")

    def __init__(self, client: tuple[str, int], host: str, record: Record, now: float) -> None:
        self.client, self.host, self.record, self.last = client, host, record, now


class DatagramRelay:
    """A client-facing datagram socket and the associations behind it."""

    def __init__(self, sock: socket.socket, stats: Stats, log: Log,
                 idle_timeout: float) -> None:
        self.sock, self.stats, self.log, self.idle_timeout = sock, stats, log, idle_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.stopped = False

    async def serve(self) -> None:
        """Relay until cancelled; then every association ends ("proxy shutting down")."""
        self._loop = loop = asyncio.get_running_loop()
        self.sock.setblocking(False)
        loop.add_reader(self.sock.fileno(), self._receive)
        try:
            while True:
                await asyncio.sleep(SWEEP_EVERY)
                idle_since = loop.time() - self.idle_timeout
                for association in [a for a in self._live() if a.last < idle_since]:
                    self._expire(association)
        finally:
            self.stop()

    def stop(self) -> None:
        """Read nothing more (datagrams wait in systemd's socket for the next process) and
        end every association."""
        self.stopped = True
        self.loop.remove_reader(self.sock.fileno())
        for task in list(self._tasks):
            task.cancel()
        for association in list(self._live()):
            self._end(association)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "not serving"
        return self._loop

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _receive(self) -> None:
        for _ in range(BATCH):
            try:
                data, client = self.sock.recvfrom(DATAGRAM_MAX)
            except BlockingIOError:
                return
            except OSError:
                continue  # an error queued for an earlier datagram; this socket goes on
            self._from_client(data, client[:2])

    def _watch(self, upstream: socket.socket, association: Association) -> None:
        """Read `upstream`, a socket inside the namespace, for `association`."""
        self.loop.add_reader(upstream.fileno(), self._receive_answers, upstream, association)

    def _unwatch(self, upstream: socket.socket) -> None:
        self.loop.remove_reader(upstream.fileno())
        upstream.close()

    def _receive_answers(self, upstream: socket.socket, association: Association) -> None:
        for _ in range(BATCH):
            try:
                data, source = upstream.recvfrom(DATAGRAM_MAX)
            except BlockingIOError:
                return
            except OSError:
                continue  # ICMP port unreachable, reported here: the next one may be answered
            association.last = self.loop.time()
            self._answer(association, data, source[:2])

    def _to_client(self, association: Association, data: bytes, header: bytes = b"") -> None:
        with contextlib.suppress(OSError):  # a full buffer, or the client gone
            self.sock.sendto(header + data, association.client)
            association.record.down += len(data)

    # What each kind of relay does with them.

    def _from_client(self, data: bytes, client: tuple[str, int]) -> None:
        raise NotImplementedError

    def _answer(self, association: Association, data: bytes, source: tuple[str, int]) -> None:
        raise NotImplementedError

    def _live(self) -> Iterable[Association]:
        raise NotImplementedError

    def _expire(self, association: Association) -> None:
        """Idle for idle_timeout."""
        raise NotImplementedError

    def _end(self, association: Association) -> None:
        """The relay stops."""
        raise NotImplementedError


class ForwardAssociation(Association):
    __slots__ = ("over_cap", "pending", "upstream")

    def __init__(self, client: tuple[str, int], host: str, record: Record, now: float) -> None:
        super().__init__(client, host, record, now)
        self.upstream: socket.socket | None = None
        self.pending: list[bytes] | None = []  # None: refused, its datagrams dropped
        self.over_cap: str | None = None


class UdpForward(DatagramRelay):
    """One forward's client-facing datagram socket and its associations."""

    def __init__(self, sock: socket.socket, forward: Forward, *, resolver: Resolver,
                 dial: DialDatagram, policy: Policy, networks: ClientNetworks,
                 identities: Identities | None, caps: limits.Limits, stats: Stats, log: Log,
                 idle_timeout: float = IDLE_TIMEOUT) -> None:
        super().__init__(sock, stats, log, idle_timeout)
        self.forward = forward
        self.resolver, self.dial, self.policy = resolver, dial, policy
        self.networks, self.identities, self.caps = networks, identities, caps
        self.associations: dict[tuple[str, int], ForwardAssociation] = {}

    def _live(self) -> Iterable[ForwardAssociation]:
        return self.associations.values()

    def _expire(self, association: Association) -> None:
        assert isinstance(association, ForwardAssociation)
        self._close(association)

    def _end(self, association: Association) -> None:
        assert isinstance(association, ForwardAssociation)
        if association.pending is not None:  # a refused one keeps saying why
            association.record.end("shutdown", "proxy shutting down")
        self._close(association)

    # -- from clients ------------------------------------------------------------------------

    def _from_client(self, data: bytes, key: tuple[str, int]) -> None:
        association = self.associations.get(key)
        if association is None:
            if len(self.associations) >= self.caps.total_max + limits.REFUSING_MAX:
                self.stats.ended["dropped"] = self.stats.ended.get("dropped", 0) + 1
                return  # a flood of new clients beyond the caps: not even a log line
            association = self._start(key)
        association.last = self.loop.time()
        if association.upstream is not None:
            self._send_up(association, data)
        elif association.pending is not None and len(association.pending) < PENDING_MAX:
            association.pending.append(data)

    def _start(self, client: tuple[str, int]) -> ForwardAssociation:
        host = client_host(client[0])
        record = Record(endpoint(host, client[1]), self.loop.time())
        record.protocol, record.target = "udp", self.forward.target
        association = ForwardAssociation(client, host, record, self.loop.time())
        self.associations[client] = association
        association.over_cap = self.caps.admit(host)
        self.stats.opened()
        self._spawn(self._open(association))
        return association

    async def _open(self, association: ForwardAssociation) -> None:
        record = association.record
        refusal = await self._refusal(association) or await self._connect(association)
        if refusal is None:
            record.end(IDLE, f"idle {self.idle_timeout:g} s")
            for data in association.pending or ():
                self._send_up(association, data)
            association.pending = []
        else:
            kind, reason = refusal
            record.end(f"refused: {kind}", f"refused: {reason}")
            association.pending = None

    async def _refusal(self, association: ForwardAssociation) -> Refusal | None:
        if association.over_cap is not None:
            return ("caps", association.over_cap)
        if not self.networks.allows(association.host):
            return ("client", "client address not in allow_clients")
        if self.identities is not None:
            identity = await self.identities.check(association.host)
            association.record.identity = identity.name
            if not identity.allowed:
                return ("identity", identity.reason)
        return None

    async def _connect(self, association: ForwardAssociation) -> Refusal | None:
        """The target resolved, judged and dialed, as the proxy does for a connection."""
        try:
            addresses = await self.resolver.resolve(self.forward.host)
        except (NameNotFound, ResolveError) as error:
            return ("name", str(error))
        allowed = self.policy.allowed(addresses)
        if not allowed:
            return ("egress", self.policy.refusal(addresses))
        try:
            upstream = association.upstream = self.dial(allowed, self.forward.target_port)
        except DialError as error:
            return ("dial", f"dial failed: {error.reason}")
        association.record.address = endpoint(*upstream.getpeername()[:2])
        self._watch(upstream, association)
        return None

    def _send_up(self, association: ForwardAssociation, data: bytes) -> None:
        assert association.upstream is not None
        with contextlib.suppress(OSError):  # a full buffer, or the target's port closed
            association.upstream.send(data)
            association.record.up += len(data)

    def _answer(self, association: Association, data: bytes, source: tuple[str, int]) -> None:
        self._to_client(association, data)  # connected: only the target's answers come

    def _close(self, association: ForwardAssociation) -> None:
        del self.associations[association.client]
        if association.upstream is not None:
            self._unwatch(association.upstream)
        if association.over_cap is None:
            self.caps.release(association.host)
        self.stats.closed(association.record)
        self.log(association.record.line(self.loop.time()))

