"""Accepting connections from listening sockets on an asyncio loop, for the proxy and the DNS
responder: a reader callback per socket takes a batch of connections per wakeup, so one busy
listener cannot starve the rest of the loop, and when the process runs out of descriptors
(EMFILE and friends) every listener rests for a moment while the connections already open
go on being served; the kernel keeps the new ones queued meanwhile.

Both use their own raw sockets rather than asyncio.start_server, which would call listen()
again and shrink the socket unit's Backlog=.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

BATCH = 64  # connections taken per wakeup
PAUSE = 0.1  # seconds without accepting when the process is out of descriptors
OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

Tag = TypeVar("Tag")  # what the caller wants back with each connection: which listener it was


class Acceptor(Generic[Tag]):
    """Hands each accepted connection to `take(sock, peer, tag)`; `paused(error)` hears of
    each pause."""

    def __init__(self, listeners: Sequence[tuple[socket.socket, Tag]],
                 take: Callable[[socket.socket, tuple[str, int], Tag], None],
                 paused: Callable[[OSError], None] = lambda error: None) -> None:
        self.listeners, self.take, self.paused = listeners, take, paused
        self._loop: asyncio.AbstractEventLoop | None = None  # while reading
        self._stopped = False

    def start(self) -> None:
        for listener, _ in self.listeners:
            listener.setblocking(False)
        self._read()

    def stop(self) -> None:
        """Accept nothing more, for good."""
        self._stopped = True
        self._unread()

    def _read(self) -> None:
        self._loop = asyncio.get_running_loop()
        for listener, tag in self.listeners:
            self._loop.add_reader(listener.fileno(), self._accept, listener, tag)

    def _unread(self) -> None:
        if self._loop is not None:
            for listener, _ in self.listeners:
                self._loop.remove_reader(listener.fileno())
            self._loop = None

    def _accept(self, listener: socket.socket, tag: Tag) -> None:
        for _ in range(BATCH):
            try:
                sock, peer = listener.accept()
            except BlockingIOError:
                return
            except OSError as error:
                if error.errno in OUT_OF_RESOURCES:
                    self._pause(error)
                    return
                continue  # an error of that one connection (ECONNABORTED, EPROTO, ...)
            self.take(sock, peer, tag)

    def _pause(self, error: OSError) -> None:
        # Descriptors are the process's: every listener rests.
        if self._loop is not None:
            self._loop.call_later(PAUSE, self._resume)
            self._unread()
        self.paused(error)

    def _resume(self) -> None:
        if not self._stopped and self._loop is None:
            self._read()
