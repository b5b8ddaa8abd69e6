"""The splice relay: bytes go socket -> pipe -> socket inside the kernel, never through Python.

Each direction (a _Flow) reads only while its pipe is empty and writes until it is empty
again, so it needs a pipe just for the moment bytes are in flight: it takes one from the pool
when its source becomes readable and gives it back once drained. An idle tunnel therefore
holds two sockets, two epoll registrations and a few small objects, nothing more. The
registrations are in the loop's Poller (poller.py), cheaper per connection than the loop's.

A direction that hits EOF, once its pipe is drained, shuts down the write side of the other
socket (half-close, as TCP means it); the tunnel ends when both directions have done so, on
a reset or error from either side (passed on as a reset to the other), or when neither side
has sent anything for the idle timeout. TCP keepalive (set on the sockets by the server)
finds peers that vanished without a word long before that.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import struct

from .pipes import PipePool
from .poller import Poller

SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
IDLE_TIMEOUT = 2 * 3600.0
PIPE_RETRY = 0.05  # seconds to wait for a pipe when the process is out of descriptors
LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST
RESET_ERRORS = (errno.ECONNRESET, errno.EPIPE, errno.ETIMEDOUT, errno.EHOSTUNREACH,
                errno.ENETUNREACH)

# Outcomes, as the log line and the counters name them.
CLOSED = "closed"
IDLE = "idle timeout"


class Tunnel:
    """Relays between two connected non-blocking sockets until both directions end.

    `done` resolves to the outcome. The caller closes the sockets afterwards (or after
    cancelling with `close`).
    """

    __slots__ = (
        "_idle_timeout",
        "_timer",
        "client",
        "done",
        "down",
        "io",
        "last",
        "loop",
        "up",
        "upstream",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, client: socket.socket,
                 upstream: socket.socket, pool: PipePool,
                 idle_timeout: float = IDLE_TIMEOUT) -> None:
        self.loop, self.io = loop, Poller.of(loop)
        self.client, self.upstream = client, upstream
        self.up = _Flow(self, pool, client, upstream, "client")
        self.down = _Flow(self, pool, upstream, client, "upstream")
        self.done: asyncio.Future[str] = self.loop.create_future()
        self.last = self.loop.time()
        self._idle_timeout = idle_timeout
        self._timer = self.loop.call_at(self.last + idle_timeout, self._check_idle)

    def start(self) -> asyncio.Future[str]:
        self.up.start()
        self.down.start()
        return self.done

    @property
    def bytes_up(self) -> int:
        return self.up.bytes

    @property
    def bytes_down(self) -> int:
        return self.down.bytes

    def close(self, outcome: str) -> None:
        """End the relay now (idempotent); registrations and pipes are released."""
        if self.done.done():
            return
        self._timer.cancel()
        self.up.detach()
        self.down.detach()
        self.done.set_result(outcome)

    def flow_finished(self) -> None:
        if self.up.finished and self.down.finished:
            self.close(CLOSED)

    def fail(self, side: str, error: OSError) -> None:
        """An error on one socket ends both directions; the other peer gets a reset, so it
        learns the stream was cut instead of seeing a clean end."""
        other = self.upstream if side == "client" else self.client
        if error.errno in RESET_ERRORS:
            outcome = f"{side} {errno.errorcode.get(error.errno or 0, 'error').lower()}"
        else:
            outcome = f"{side} error: {error.strerror}"
        with contextlib.suppress(OSError):
            other.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
        self.close(outcome)

    def _check_idle(self) -> None:
        # One timer per tunnel, moved only when it fires: activity just stamps `last`.
        deadline = self.last + self._idle_timeout
        if self.loop.time() >= deadline:
            self.close(IDLE)
        else:
            self._timer = self.loop.call_at(deadline, self._check_idle)


class _Flow:
    """One direction: src -> pipe -> dst."""

    __slots__ = ("bytes", "dst", "dst_fd", "eof", "finished", "io", "loop", "pending", "pipe",
                 "pool", "reading", "side", "src", "src_fd", "tunnel", "writing")

    def __init__(self, tunnel: Tunnel, pool: PipePool, src: socket.socket, dst: socket.socket,
                 side: str) -> None:
        self.tunnel, self.loop, self.io, self.pool = tunnel, tunnel.loop, tunnel.io, pool
        self.src, self.dst = src, dst
        self.src_fd, self.dst_fd = src.fileno(), dst.fileno()
        self.side = side  # who sends on this flow, for error messages
        self.pipe: tuple[int, int] | None = None
        self.pending = 0  # bytes in the pipe
        self.bytes = 0  # bytes delivered to dst
        self.reading = self.writing = self.eof = self.finished = False

    def start(self) -> None:
        self.io.add_reader(self.src_fd, self._readable)
        self.reading = True

    def detach(self) -> None:
        if self.reading:
            self.io.remove_reader(self.src_fd)
            self.reading = False
        if self.writing:
            self.io.remove_writer(self.dst_fd)
            self.writing = False
        if self.pipe is not None:
            if self.pending:
                self.pool.close(self.pipe)  # bytes no one will read: never reuse it
            else:
                self.pool.give(self.pipe)
            self.pipe = None

    def _readable(self) -> None:
        pipe = self.pipe
        if pipe is None:
            try:
                pipe = self.pipe = self.pool.take()
            except OSError:
                # Out of descriptors: wait for some to free up rather than drop the tunnel.
                self._stop_reading()
                self.loop.call_later(PIPE_RETRY, self._resume)
                return
        try:
            moved = os.splice(self.src_fd, pipe[1], self.pool.size, flags=SPLICE_FLAGS)
        except BlockingIOError:
            self._release()
            return
        except OSError as error:
            self.tunnel.fail(self.side, error)
            return
        if moved:
            self.tunnel.last = self.loop.time()
            self.pending = moved
            self._drain()
            return
        self.eof = True
        self._release()
        self._stop_reading()
        self._finish()

    def _drain(self) -> None:
        assert self.pipe is not None
        read = self.pipe[0]
        try:
            while self.pending:
                moved = os.splice(read, self.dst_fd, self.pending, flags=SPLICE_FLAGS)
                if not moved:
                    raise OSError(errno.EIO, "splice moved nothing")
                self.pending -= moved
                self.bytes += moved
        except BlockingIOError:
            # dst is full: stop reading src (that is the backpressure) until it drains.
            self._stop_reading()
            if not self.writing:
                self.io.add_writer(self.dst_fd, self._drain)
                self.writing = True
            return
        except OSError as error:
            self.tunnel.fail("client" if self.side == "upstream" else "upstream", error)
            return
        self._release()
        if self.writing:
            self.io.remove_writer(self.dst_fd)
            self.writing = False
        if self.eof:
            self._finish()
        elif not self.reading:
            self.io.add_reader(self.src_fd, self._readable)
            self.reading = True

    def _release(self) -> None:
        if self.pipe is not None and not self.pending:
            self.pool.give(self.pipe)
            self.pipe = None

    def _stop_reading(self) -> None:
        if self.reading:
            self.io.remove_reader(self.src_fd)
            self.reading = False

    def _resume(self) -> None:
        if not self.tunnel.done.done() and not self.reading and not self.eof:
            self.io.add_reader(self.src_fd, self._readable)
            self.reading = True

    def _finish(self) -> None:
        with contextlib.suppress(OSError):  # dst is gone already; the other direction will tell
            self.dst.shutdown(socket.SHUT_WR)
        self.finished = True
        self.tunnel.flow_finished()
