"""The proxy's own epoll beside asyncio's loop: callbacks as the loop would call them, none
for a registration removed or replaced within the batch that reported it ready, and an
exception costing only its own callback."""

from __future__ import annotations

import asyncio
import functools
import gc
import socket
import weakref
from typing import Any

import pytest

from tsproxy.proxy.poller import Poller

pytestmark = pytest.mark.unit


def pairs(count: int) -> list[tuple[socket.socket, socket.socket]]:
    made = [socket.socketpair() for _ in range(count)]
    for a, b in made:
        a.setblocking(False)
        b.setblocking(False)
    return made


def test_readers_and_writers_are_called_while_ready() -> None:
    async def test() -> None:
        loop = asyncio.get_running_loop()
        poller = Poller.of(loop)
        assert Poller.of(loop) is poller  # one per loop
        (a, b), = pairs(1)
        got: list[bytes] = []
        writable = loop.create_future()
        poller.add_reader(a.fileno(), lambda: got.append(a.recv(10)))

        def wake() -> None:
            if not writable.done():
                writable.set_result(True)

        poller.add_writer(a.fileno(), wake)
        assert await writable
        poller.remove_writer(a.fileno())
        b.send(b"one")
        await asyncio.sleep(0.05)
        b.send(b"two")
        await asyncio.sleep(0.05)
        assert got == [b"one", b"two"]
        poller.remove_reader(a.fileno())
        b.send(b"three")
        await asyncio.sleep(0.05)
        assert got == [b"one", b"two"]  # not watched any more
        a.close()
        b.close()

    asyncio.run(test())


def test_a_callback_replaced_within_a_batch_is_not_called_for_it() -> None:
    async def test() -> None:
        loop = asyncio.get_running_loop()
        poller = Poller.of(loop)
        made = pairs(3)
        calls: list[str] = []

        def new(index: int) -> None:
            calls.append(f"new {index}")
            made[index][0].recv(10)

        def old(index: int) -> None:
            calls.append(f"old {index}")
            made[index][0].recv(10)
            if len(calls) == 1:  # the first of the batch replaces the other two
                for other in range(3):
                    if other != index:
                        poller.add_reader(made[other][0].fileno(), functools.partial(new, other))

        for index, (a, _) in enumerate(made):
            poller.add_reader(a.fileno(), functools.partial(old, index))
        for _, b in made:
            b.send(b"x")  # all three ready at once: one batch
        await asyncio.sleep(0.05)
        first = int(calls[0].split()[1])
        assert sorted(calls[1:]) == [f"new {i}" for i in range(3) if i != first], calls
        for a, b in made:
            poller.remove_reader(a.fileno())
            a.close()
            b.close()

    asyncio.run(test())


def test_an_exception_goes_to_the_loop_and_the_batch_goes_on() -> None:
    async def test() -> None:
        loop = asyncio.get_running_loop()
        reported: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _, context: reported.append(context))
        poller = Poller.of(loop)
        (a1, b1), (a2, b2) = pairs(2)
        got: list[bytes] = []

        def broken() -> None:
            a1.recv(10)
            raise ValueError("a bug")

        poller.add_reader(a1.fileno(), broken)
        poller.add_reader(a2.fileno(), lambda: got.append(a2.recv(10)))
        b1.send(b"x")
        b2.send(b"y")
        await asyncio.sleep(0.05)
        assert got == [b"y"]
        assert [str(context["exception"]) for context in reported] == ["a bug"]
        for sock in (a1, a2):
            poller.remove_reader(sock.fileno())
        for sock in (a1, b1, a2, b2):
            sock.close()

    asyncio.run(test())


def test_a_closed_loop_takes_its_poller_and_epoll_with_it() -> None:
    async def register() -> weakref.ref[Poller]:
        a, b = pairs(1)[0]
        poller = Poller.of(asyncio.get_running_loop())
        poller.add_reader(a.fileno(), lambda: None)
        poller.remove_reader(a.fileno())
        a.close()
        b.close()
        return weakref.ref(poller)

    poller = asyncio.run(register())
    gc.collect()
    assert poller() is None
