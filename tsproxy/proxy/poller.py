"""Readiness callbacks for the proxy's connection sockets, from an epoll of their own.

Why: asyncio's add_reader and remove_reader are pure Python that look the descriptor up in
two maps by raising and catching KeyError (one of them a WeakValueDictionary of transports
these sockets never have), and every event becomes a Handle run through a context; a pair of
them costs about 20 us here against 5 us for the epoll calls themselves, and a proxied
connection makes three pairs and half a dozen events. So the connections' sockets go into
one epoll, which sits in asyncio's loop as a single reader: when it is ready, `_dispatch`
calls each ready socket's callback directly.

Every socket leaves the epoll before it is closed (the callers' rule, as with the loop's own
registrations). Level-triggered, as asyncio is: a callback that leaves bytes unread is
called again. A
callback replaced or removed while a batch is dispatched is not called for that batch (a
descriptor closed and reused within a batch must not get its predecessor's event); an
exception in one goes to the loop's exception handler, as a Handle's would, and the rest of
the batch still runs.
"""

from __future__ import annotations

import asyncio
import select
import weakref
from collections.abc import Callable

Callback = Callable[[], object]

READ = select.EPOLLIN
WRITE = select.EPOLLOUT
# Readiness that wakes both: a reader sees EOF or the error, a writer (a connect) its result.
BOTH = select.EPOLLHUP | select.EPOLLERR
BATCH = 256  # events taken per wakeup

_pollers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Poller] = \
    weakref.WeakKeyDictionary()


class Poller:
    """add_reader/remove_reader/add_writer/remove_writer as the loop has them (callbacks take
    no arguments), for the loop's one Poller: `Poller.of(loop)`."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # Weakly: a Poller is its loop's value in _pollers, and a value that held its key
        # would keep both (and the epoll's descriptor) for good once the loop is closed.
        self._loop = weakref.ref(loop)
        self._epoll = select.epoll()
        self._readers: dict[int, Callback] = {}
        self._writers: dict[int, Callback] = {}
        self._watched = False  # the epoll is a reader of the loop's (from the first socket)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop()
        assert loop is not None, "the loop is gone"
        return loop

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> Poller:
        poller = _pollers.get(loop)
        if poller is None:
            poller = _pollers[loop] = cls(loop)
        return poller

    def add_reader(self, fd: int, callback: Callback) -> None:
        self._set(fd, callback, self._readers)

    def add_writer(self, fd: int, callback: Callback) -> None:
        self._set(fd, callback, self._writers)

    def remove_reader(self, fd: int) -> None:
        self._unset(fd, self._readers)

    def remove_writer(self, fd: int) -> None:
        self._unset(fd, self._writers)

    def _set(self, fd: int, callback: Callback, table: dict[int, Callback]) -> None:
        before = self._mask(fd)
        table[fd] = callback
        if not before:
            self._epoll.register(fd, self._mask(fd))
            if not self._watched:
                self.loop.add_reader(self._epoll.fileno(), self._dispatch)
                self._watched = True
        elif (after := self._mask(fd)) != before:  # else only the callback changed: no syscall
            self._epoll.modify(fd, after)

    def _unset(self, fd: int, table: dict[int, Callback]) -> None:
        if table.pop(fd, None) is None:
            return
        if mask := self._mask(fd):
            self._epoll.modify(fd, mask)
        else:
            self._epoll.unregister(fd)

    def _mask(self, fd: int) -> int:
        return (READ if fd in self._readers else 0) | (WRITE if fd in self._writers else 0)

    def _dispatch(self) -> None:
        readers, writers = self._readers, self._writers
        ready = []
        for fd, events in self._epoll.poll(0, BATCH):
            if events & (READ | BOTH) and (reader := readers.get(fd)) is not None:
                ready.append((fd, reader, readers))
            if events & (WRITE | BOTH) and (writer := writers.get(fd)) is not None:
                ready.append((fd, writer, writers))
        for fd, callback, table in ready:
            if table.get(fd) is callback:  # still wanted: not removed or replaced meanwhile
                try:
                    callback()
                except Exception as error:
                    self.loop.call_exception_handler({
                        "message": f"exception in a callback of descriptor {fd}",
                        "exception": error})
