"""The proxy's listening sockets and what all connections share: accepting, the checks and
the means (resolver, dialer, policy, caps, counters), stopping.

The server owns raw non-blocking sockets: the handshake reads and sends on them directly and
the relay splices between them, which asyncio's transports would forbid. Accepting is
accepting.py's, in batches, resting a moment when the process runs out of descriptors; each
accepted socket becomes a Connection (connection.py), driven by loop callbacks and a Task
only while it awaits something, because on a small machine the proxy's own CPU time per
connection is what limits new connections per second.

Every connection ends in exactly one log line and one counter (stats.Record).

The HTTP requests the proxy answers itself (`local`: `GET /proxy.pac`, `GET /metrics` and
the status page `GET /`, which service.py adds) pass the same client checks as a tunnel
except the login (browsers fetch their PAC and pages, and Prometheus scrapes, without proxy
credentials); the text comes from an injected function, given the address the request
arrived on.

A TCP forward (`forward = PORT=HOST:PORT`) is one more listening socket whose connections skip
the handshake: the forward names the target, and the same checks, names, egress policy,
caps, relay, log line and counters apply (no login: a forward cannot ask for one). A UDP
ASSOCIATE passes every check a CONNECT does; then associate.py relays its datagrams.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Sequence

from tsproxy_generator.addresses import Address
from tsproxy_generator.model import Forward, Listen

from .. import accepting
from ..names import Resolver
from ..proto.http_connect import METRICS_PATH, PAC_PATH
from . import limits, resources
from .access import ClientNetworks, Identities, Users
from .associate import UdpAssociate
from .connection import Connection
from .egress import Dialer, Policy
from .pipes import PipePool
from .relay import IDLE_TIMEOUT
from .stats import Log, Stats

HANDSHAKE_TIMEOUT = 10.0
LOG_PAUSES_EVERY = 10.0  # seconds between "accepting paused" lines in a long shortage
DRAIN_POLL = 0.05  # seconds between looks at the open connections while draining

Dial = Callable[[Sequence[Address], int], Awaitable[socket.socket]]
# The PAC text for a request that arrived on this address (runs in a thread: it reads confs).
PacSource = Callable[[Listen], str]


class Server:
    def __init__(self, listener: socket.socket, *, resolver: Resolver, dial: Dialer | Dial,
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
        self.resolver, self.policy = resolver, policy
        # A Dialer is driven from callbacks (connection.py); another dial function (the unit
        # tests') is awaited.
        self.dialer: Dialer | None = dial if isinstance(dial, Dialer) else None
        self.dial: Dial | None = None if isinstance(dial, Dialer) else dial
        self.networks, self.users, self.identities = networks, users, identities
        self.caps, self.stats, self.pool, self.log = caps, stats, pool, log
        self.handshake_timeout, self.idle_timeout = handshake_timeout, idle_timeout
        self.local: dict[str, resources.LocalSource] = {}
        if pac is not None:
            self.local[PAC_PATH] = lambda arrival: asyncio.to_thread(pac, arrival)
        if metrics is not None:
            self.local[METRICS_PATH] = metrics
        self.udp: UdpAssociate | None = None  # UDP ASSOCIATE's relay, when it has a socket
        self.connections: set[Connection] = set()  # open, for the end of serving
        self._loop: asyncio.AbstractEventLoop | None = None
        self.group: asyncio.TaskGroup | None = None  # while serving: the waiting connections'
        self._accepting = False
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
        try:
            async with asyncio.TaskGroup() as group:
                self.group, self._accepting = group, True
                self._acceptor.start()
                try:
                    await self._loop.create_future()  # forever: the work is in callbacks
                finally:
                    # No new Task from here: the group cancels the ones waiting.
                    self.stop_accepting()
                    self.group = None
                    self._stop_connections()
        finally:
            self._stop_connections()  # any a cancelled Task left to callbacks

    def _stop_connections(self) -> None:
        for connection in list(self.connections):
            connection.stop()

    def stop_accepting(self) -> None:
        """Take no new connection. Only this process's descriptors of the listening sockets
        are closed: systemd's stay open, so connections that arrive now wait in its backlog
        for the next proxy (a restart on upgrade)."""
        if self._accepting:
            self._accepting = False
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
        if not Connection(self, sock, peer, self.forwards.get(listener)).start():
            self._drop(sock)

    def _paused(self, error: OSError) -> None:
        self._pauses += 1
        if self.loop.time() - self._paused_at >= LOG_PAUSES_EVERY:
            self.log(f"accepting paused {self._pauses} time(s) for {accepting.PAUSE:g} s: "
                     f"{error.strerror} ({self.stats.active} connections open)")
            self._paused_at, self._pauses = self.loop.time(), 0

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
