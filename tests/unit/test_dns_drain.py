"""DnsServer.drain, the responder's way out on SIGTERM: the queries it has read are answered,
nothing more is read, and what arrives meanwhile stays in the sockets for the next responder.

A duplicate of each listening socket stands in for systemd's copy (the process closes only
its own descriptors); the test reads what was left there. Loopback only."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

import pytest

from tsproxy.dns.server import DnsServer

pytestmark = pytest.mark.unit


class SlowResponder:
    """Answers "re:" + query once released; never at once, as a peer lookup waits on tailscaled."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.asked = 0

    def answer_now(self, query: bytes) -> bytes | None:
        return None

    async def answer(self, query: bytes, udp: bool) -> bytes | None:
        self.asked += 1
        await self.release.wait()
        return b"re:" + query


async def until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def sockets() -> tuple[socket.socket, socket.socket]:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(16)
    return udp, tcp


def test_udp_answers_what_it_read_and_leaves_the_rest_queued() -> None:
    async def main() -> None:
        udp, tcp = sockets()
        systemds = udp.dup()
        responder = SlowResponder()
        server = DnsServer([udp, tcp], responder, log=lambda line: None)  # type: ignore[arg-type]
        serving = asyncio.ensure_future(server.serve())
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.settimeout(5)
        client.sendto(b"q1", udp.getsockname())
        await until(lambda: responder.asked == 1)
        draining = asyncio.ensure_future(server.drain(5.0))
        await asyncio.sleep(0.1)
        client.sendto(b"q2", udp.getsockname())  # after the drain began: not read
        await asyncio.sleep(0.1)
        assert not draining.done()  # q1 is still being answered
        responder.release.set()
        await asyncio.wait_for(draining, 2)
        assert client.recvfrom(100)[0] == b"re:q1"
        systemds.settimeout(1)
        assert systemds.recvfrom(100)[0] == b"q2"  # for the next responder
        assert responder.asked == 1
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)
        for sock in (client, systemds, udp):
            sock.close()

    asyncio.run(main())


def test_drain_gives_up_after_the_grace() -> None:
    async def main() -> None:
        udp, tcp = sockets()
        responder = SlowResponder()
        server = DnsServer([udp, tcp], responder, log=lambda line: None)  # type: ignore[arg-type]
        serving = asyncio.ensure_future(server.serve())
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.sendto(b"q1", udp.getsockname())
        await until(lambda: responder.asked == 1)
        started = time.monotonic()
        await server.drain(0.3)  # never released
        assert 0.25 < time.monotonic() - started < 2
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)
        client.close()

    asyncio.run(main())


def test_tcp_answers_the_query_in_flight_closes_idle_clients_and_leaves_new_ones() -> None:
    async def main() -> None:
        udp, tcp = sockets()
        systemds = tcp.dup()
        address = tcp.getsockname()
        responder = SlowResponder()
        server = DnsServer([udp, tcp], responder, log=lambda line: None)  # type: ignore[arg-type]
        serving = asyncio.ensure_future(server.serve())
        busy_reader, busy = await asyncio.open_connection(*address)
        idle_reader, idle = await asyncio.open_connection(*address)
        busy.write(b"\x00\x02q1")
        await until(lambda: responder.asked == 1)
        draining = asyncio.ensure_future(server.drain(5.0))
        assert await asyncio.wait_for(idle_reader.read(), 2) == b""  # closed: it may retry
        late = socket.create_connection(address, timeout=2)  # waits in the backlog
        responder.release.set()
        await asyncio.wait_for(draining, 2)
        assert await asyncio.wait_for(busy_reader.readexactly(7), 2) == b"\x00\x05re:q1"
        assert await asyncio.wait_for(busy_reader.read(), 2) == b""  # then closed
        systemds.settimeout(1)
        accepted, _ = systemds.accept()  # for the next responder
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)
        for sock in (accepted, late, systemds, udp):
            sock.close()
        busy.close()
        idle.close()

    asyncio.run(main())


def test_tcp_a_client_that_just_connected_gets_its_first_query_answered() -> None:
    # dig connects, then sends: a drain in between must not close it on an empty read
    # (dig says "communications error: end of file" and gives up).
    async def main() -> None:
        udp, tcp = sockets()
        address = tcp.getsockname()
        responder = SlowResponder()
        responder.release.set()
        server = DnsServer([udp, tcp], responder, log=lambda line: None)  # type: ignore[arg-type]
        serving = asyncio.ensure_future(server.serve())
        reader, writer = await asyncio.open_connection(*address)
        await until(lambda: bool(server._tcp_fresh))
        draining = asyncio.ensure_future(server.drain(5.0))
        await asyncio.sleep(0.3)
        writer.write(b"\x00\x02q1")
        assert await asyncio.wait_for(reader.readexactly(7), 2) == b"\x00\x05re:q1"
        assert await asyncio.wait_for(reader.read(), 2) == b""  # then closed
        await asyncio.wait_for(draining, 2)
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)
        writer.close()
        for sock in (udp, tcp):
            sock.close()

    asyncio.run(main())
