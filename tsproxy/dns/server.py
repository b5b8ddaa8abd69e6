"""The responder's sockets: UDP and TCP on every address, one asyncio loop.

UDP is read in batches straight from the socket (a readiness callback drains up to BATCH
datagrams), so under load one wakeup serves many queries; the fast path answers in the same
callback, everything else becomes a task, at most MAX_PENDING at once (beyond that a query is
dropped, as a busy server's UDP is, and the client retries). TCP (RFC 7766) takes pipelined
queries one after another, with an idle timeout and a cap on connections.

TCP is accepted here rather than by asyncio.start_server, for two reasons. start_server
calls listen(100) again on the socket systemd made, shrinking the socket unit's Backlog=;
a full queue then drops SYNs, the clients retry seconds later, and each one's idle timer
starts only then. And a connection past the cap must be closed at once, never left in the
kernel's queue: so the cap stays below the fd limit (an accept failing with EMFILE leaves
the connection queued and untimed), and every accepted connection gets its timer at once.

drain() is the way out on SIGTERM: it reads nothing more (what arrives stays queued in
systemd's sockets for the next responder, a restart on upgrade) and answers what it has read.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import socket
import sys
from collections.abc import Callable

from ..accepting import Acceptor
from .answer import Responder

BATCH = 64
MAX_DATAGRAM = 4096  # a query is a few hundred bytes; a bigger datagram is no query of ours
MAX_PENDING = 4096
MAX_TCP = 1024
TCP_IDLE = 10.0  # seconds a TCP client may take to send its next message (or the rest of one)
FD_RESERVE = 64  # descriptors kept for everything but TCP clients: sockets, LocalAPI calls
FIRST_QUERY_WAIT = 1.0  # seconds a draining responder waits for a new client's first query


class DnsServer:
    """Serves ``responder`` (replaceable: a reload swaps it) on ``sockets``, UDP and TCP."""

    def __init__(self, sockets: list[socket.socket], responder: Responder,
                 log: Callable[[str], None] = lambda line: print(line, file=sys.stderr)) -> None:
        self.sockets = sockets
        self.responder = responder
        self.log = log
        self._pending: set[asyncio.Task[None]] = set()
        self._tcp_clients: set[asyncio.Task[None]] = set()
        self._tcp_waiting: set[asyncio.Task[object]] = set()  # those between two queries
        self._tcp_fresh: set[asyncio.Task[object]] = set()  # those before their first query
        self._draining = False
        self.max_tcp = tcp_cap()
        self.dropped = 0
        self._acceptor = Acceptor([(sock, None) for sock in sockets
                                   if sock.type == socket.SOCK_STREAM], self._take)

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        for sock in self.sockets:
            if sock.type == socket.SOCK_DGRAM:
                sock.setblocking(False)
                loop.add_reader(sock.fileno(), self._readable, sock)
        self._acceptor.start()
        try:
            await asyncio.Event().wait()
        finally:
            self._stop_reading()
            for task in [*self._pending, *self._tcp_clients]:
                task.cancel()

    def _stop_reading(self) -> None:
        """No new query: datagrams and connections that arrive now stay queued in systemd's
        sockets (only this process stops reading them) for the next responder."""
        self._acceptor.stop()
        loop = asyncio.get_running_loop()
        for sock in self.sockets:
            if sock.type == socket.SOCK_DGRAM:
                loop.remove_reader(sock.fileno())

    async def drain(self, grace: float) -> None:
        """Answer the queries already read, for at most `grace` seconds, and read no more: a
        TCP client waiting to send its next query is closed (RFC 7766 lets it retry)."""
        self._draining = True
        self._stop_reading()
        for task in self._tcp_waiting:
            task.cancel()
        # A client that has just connected is sending its first query: it gets a moment to
        # arrive (dig reports a closed fresh connection as a failure, not as a retry).
        asyncio.get_running_loop().call_later(FIRST_QUERY_WAIT, _cancel_all, self._tcp_fresh)
        busy = self._pending | self._tcp_clients
        if busy:
            await asyncio.wait(busy, timeout=grace)

    def _take(self, sock: socket.socket, _peer: tuple[str, int], _tag: None) -> None:
        if len(self._tcp_clients) >= self.max_tcp:
            sock.close()
            return
        task = asyncio.ensure_future(self._tcp(sock))
        self._tcp_clients.add(task)
        task.add_done_callback(self._tcp_clients.discard)

    def _readable(self, sock: socket.socket) -> None:
        # The hot loop: names looked up once, the send's error handling inline.
        answer_now, recvfrom, sendto = self.responder.answer_now, sock.recvfrom, sock.sendto
        for _ in range(BATCH):
            try:
                query, peer = recvfrom(MAX_DATAGRAM)
            except OSError:
                # Nothing more (EAGAIN), or an ICMP error for an earlier reply: nothing to answer.
                return
            reply = answer_now(query)
            if reply is not None:
                # _send's contextlib.suppress would cost about a microsecond per reply here.
                try:  # noqa: SIM105
                    sendto(reply, peer)
                except OSError:
                    pass  # a full buffer drops the reply, as a full network would: it retries
            elif len(self._pending) < MAX_PENDING:
                task = asyncio.ensure_future(self._answer_later(sock, query, peer,
                                                                self.responder))
                self._pending.add(task)
                task.add_done_callback(self._pending.discard)
            else:
                self.dropped += 1

    async def _answer_later(self, sock: socket.socket, query: bytes, peer: tuple[str, int],
                            responder: Responder) -> None:
        reply = await responder.answer(query, udp=True)
        if reply is not None:
            _send(sock, reply, peer)

    async def _tcp(self, sock: socket.socket) -> None:
        task = asyncio.current_task()
        assert task is not None
        writer = None
        try:
            reader, writer = await asyncio.open_connection(sock=sock)
            waiting = self._tcp_fresh
            while True:
                async with asyncio.timeout(TCP_IDLE):
                    waiting.add(task)
                    length = int.from_bytes(await reader.readexactly(2), "big")
                    waiting.discard(task)
                    query = await reader.readexactly(length)
                responder = self.responder
                reply = responder.answer_now(query) or await responder.answer(query, udp=False)
                if reply is None:
                    break  # not a query (too short, or a response): nothing sane to say
                writer.write(len(reply).to_bytes(2, "big") + reply)
                async with asyncio.timeout(TCP_IDLE):
                    await writer.drain()
                if self._draining:
                    break
                waiting = self._tcp_waiting
        except (asyncio.IncompleteReadError, TimeoutError, OSError):
            pass  # the client went away, lied about a length, or stalled: just close
        finally:
            self._tcp_fresh.discard(task)
            self._tcp_waiting.discard(task)
            if writer is not None:
                writer.transport.abort()
            else:
                sock.close()


def _cancel_all(tasks: set[asyncio.Task[object]]) -> None:
    for task in list(tasks):
        task.cancel()


def tcp_cap() -> int:
    """MAX_TCP, or fewer where the soft fd limit would not hold that many (systemd's
    default soft limit is 1024; the unit sets its own)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_TCP
    return max(1, min(MAX_TCP, soft - FD_RESERVE))


def _send(sock: socket.socket, reply: bytes, peer: tuple[str, int]) -> None:
    # A full socket buffer drops the reply, as a full network would: the client retries.
    with contextlib.suppress(BlockingIOError, InterruptedError, OSError):
        sock.sendto(reply, peer)
