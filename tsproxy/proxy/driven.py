"""The loop plumbing of a connection driven by callbacks instead of a Task (connection.py).

Why it is shaped so: a Task per connection costs a coroutine, a future and two epoll changes
for every wait, and on a small machine that CPU time bounds new connections per second. A
Driven connection registers a reader or a writer only when the socket cannot go on at once,
keeps at most one timer, sends without waiting when the socket takes the bytes (it nearly
always does: replies are small) and finishes the rest from a writer, and dials through
egress.Attempt, a writer watching a connect in flight. When a step truly has
to await something else, `wait` runs it in a Task of its own and goes on from its result;
only that connection, only for that step, has a Task.

The client's reader stays registered from the handshake's last bytes on: a connection that
goes straight on to relaying hands it to the Tunnel, which only swaps its callback; every
step that gives the loop back first (`wait`, a connect in flight, a send finished by a
writer) drops it, so no byte is read out of turn.

Every callback is wrapped by `callback`: an exception is a bug that costs this connection
(`crashed`), never the proxy's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar

from tsproxy_generator.addresses import Address

from .egress import Attempt, Dialer, DialError, connect_error
from .poller import Poller

SHUTDOWN = "proxy shutting down"

Sent = Callable[[OSError | None], None]  # what to do once bytes are sent, or failed
Dialed = Callable[[socket.socket | DialError], None]  # ... once a dial is connected, or failed

P = ParamSpec("P")
T = TypeVar("T")
D = TypeVar("D", bound="Driven")


def callback(method: Callable[Concatenate[D, P], None]) -> Callable[Concatenate[D, P], None]:
    """A loop callback of a connection: a bug costs this connection, never the proxy."""
    def run(self: D, /, *args: P.args, **kwargs: P.kwargs) -> None:
        try:
            method(self, *args, **kwargs)
        except Exception as error:
            self.crashed(error)
    return run


class Driven:
    """A client socket's reader, one writer, one timer and a Task while waiting; subclasses
    say what reading means, how a connection ends and which TaskGroup holds their Tasks."""

    __slots__ = ("_connecting", "_out", "fd", "io", "loop", "reading", "sock", "task", "timer",
                 "writing")

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        self.loop, self.io, self.sock, self.fd = loop, Poller.of(loop), sock, sock.fileno()
        self.reading = False
        self.writing: int | None = None  # the descriptor the writer watches
        self.timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None  # while awaiting something
        self._out: tuple[socket.socket, memoryview, Sent] | None = None
        self._connecting: tuple[Attempt, Dialed] | None = None

    # What subclasses define.

    def readable(self) -> None:
        raise NotImplementedError

    def crashed(self, error: Exception) -> None:
        raise NotImplementedError

    def end(self, kind: str, outcome: str) -> None:
        raise NotImplementedError

    def group(self) -> asyncio.TaskGroup | None:
        """Where Tasks go; None once the server is stopping."""
        raise NotImplementedError

    # Sending.

    def send(self, sock: socket.socket, data: bytes, then: Sent) -> None:
        """Send `data` on `sock`, then `then(None)`, or `then(error)`. Only a rest the socket
        did not take waits, for a writer; reading pauses meanwhile, so answers stay in order."""
        try:
            sent = sock.send(data) if data else 0
        except BlockingIOError:
            sent = 0
        except OSError as error:
            then(error)
            return
        if sent == len(data):
            then(None)
            return
        self._out = (sock, memoryview(data)[sent:], then)
        self.watch_writable(sock, self._writable)

    @callback
    def _writable(self) -> None:
        assert self._out is not None
        sock, rest, then = self._out
        try:
            rest = rest[sock.send(rest):]
        except BlockingIOError:
            return
        except OSError as error:
            self.write_off()
            then(error)
            return
        if rest:
            self._out = (sock, rest, then)
            return
        self.write_off()
        self._out = None
        then(None)

    @staticmethod
    def send_now(sock: socket.socket, data: bytes) -> None:
        """A last answer before closing, if the socket takes it at once; a client that cannot
        take a few bytes is not waited for."""
        if data:
            with contextlib.suppress(OSError):
                sock.send(data)

    # Connecting.

    def connect(self, dialer: Dialer, addresses: Sequence[Address], port: int,
                then: Dialed) -> None:
        """Dial the first of `addresses` that answers, through `dialer`, without a Task:
        `then(socket)`, or `then(DialError)` with the first address's error when all fail.
        The connect in flight is watched by a writer, under the dialer's timeout."""
        try:
            attempt = Attempt(dialer, addresses, port)
            if attempt.next():
                then(attempt.current)
                return
        except DialError as error:
            then(error)
            return
        self._connecting = (attempt, then)
        self.timer = self.loop.call_later(dialer.timeout, self._connect_timed_out)
        self.watch_writable(attempt.current, self._connect_ended)

    @callback
    def _connect_ended(self) -> None:
        assert self._connecting is not None
        attempt = self._connecting[0]
        self.write_off()  # before the socket may close
        try:
            if not (attempt.ended(connect_error(attempt.current)) or attempt.next()):
                self.watch_writable(attempt.current, self._connect_ended)  # the next address
                return
            result: socket.socket | DialError = attempt.current
        except DialError as error:
            result = error
        self._connected(result)

    @callback
    def _connect_timed_out(self) -> None:
        assert self._connecting is not None
        self.write_off()
        self._connected(self._connecting[0].timed_out())

    def _connected(self, result: socket.socket | DialError) -> None:
        assert self._connecting is not None
        then = self._connecting[1]
        self._connecting = None
        self.cancel_timer()
        then(result)

    # Waiting on something else.

    def wait(self, step: Awaitable[T], then: Callable[[Any], None],
             errors: type[Exception] | tuple[type[Exception], ...] = ()) -> None:
        """Await `step` in a Task of this connection's own, then go on with `then(result)`;
        an exception of `errors` is passed to `then` as the result."""
        self.read_off()  # nothing is read meanwhile
        group = self.group()
        if group is None:
            if isinstance(step, Coroutine):
                step.close()  # never awaited, and that is fine
            self.end("shutdown", SHUTDOWN)
            return
        self.task = group.create_task(self._waiting(step, then, errors))

    async def _waiting(self, step: Awaitable[T], then: Callable[[Any], None],
                       errors: type[Exception] | tuple[type[Exception], ...]) -> None:
        try:
            try:
                result: T | Exception = await step
            except errors as error:
                result = error
            self.task = None
            then(result)
        except asyncio.CancelledError:
            self.end("shutdown", SHUTDOWN)
            raise
        except Exception as error:
            self.crashed(error)

    # Registrations.

    def read_on(self) -> None:
        if not self.reading:
            self.io.add_reader(self.fd, self.readable)
            self.reading = True

    def read_off(self) -> None:
        if self.reading:
            self.io.remove_reader(self.fd)
            self.reading = False

    def watch_writable(self, sock: socket.socket, then: Callable[[], None]) -> None:
        self.read_off()
        self.writing = sock.fileno()
        self.io.add_writer(self.writing, then)

    def write_off(self) -> None:
        if self.writing is not None:
            self.io.remove_writer(self.writing)
            self.writing = None

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def unregister(self) -> None:
        """Before the sockets close: no callback is left to run on them, and a connect in
        flight is given up."""
        self.read_off()
        self.write_off()
        self.cancel_timer()
        if self._connecting is not None:
            self._connecting[0].abandon()
            self._connecting = None
