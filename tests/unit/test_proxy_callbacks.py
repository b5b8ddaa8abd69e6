"""The connections the server drives from loop callbacks, with the real Dialer's connects
(on loopback, without tailscale0): no Task for a tunnel, and exactly one log line and one
counter however a connection ends, mid-handshake, mid-dial or at shutdown."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence

import pytest
from test_proxy_server import run, socks, world

from tsproxy.proto import Reply
from tsproxy.proxy.egress import Dialer
from tsproxy_generator.addresses import Address

pytestmark = pytest.mark.unit


class Loopback(Dialer):
    """The Dialer, its attempts and their timeout as the proxy runs them, minus the device:
    every address counts as routed and sockets are not bound to tailscale0. `sndbuf` makes
    the outgoing sockets' send buffers small, so a big enough write is taken in part."""

    def __init__(self, timeout: float = 10.0, sndbuf: int | None = None) -> None:
        super().__init__("lo", timeout)
        self.sndbuf = sndbuf

    def routed(self, addresses: Sequence[Address]) -> list[Address]:
        return list(addresses)

    def open(self, version: int, kind: socket.SocketKind = socket.SOCK_STREAM) -> socket.socket:
        sock = socket.socket(socket.AF_INET, kind | socket.SOCK_NONBLOCK)
        if self.sndbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.sndbuf)
        return sock


def target(backlog: int = 16, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind(("127.0.0.1", 0))
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


def full_target() -> tuple[socket.socket, socket.socket]:
    """A listener whose accept queue is full: a connect to it stays in flight (its SYN is
    dropped), as one to a peer that does not answer."""
    listener = target(backlog=0)
    filler = socket.create_connection(listener.getsockname())
    return listener, filler


def test_a_tunnel_is_served_without_a_task() -> None:
    async def test() -> None:
        loop = asyncio.get_running_loop()
        upstream = target()
        port = upstream.getsockname()[1]
        async with world(dialer=Loopback()) as w:
            tasks = asyncio.all_tasks()
            reader, writer, reply = await socks(w, b"127.0.0.1", port)
            assert reply[1] == Reply.SUCCEEDED
            far, _ = await loop.sock_accept(upstream)
            writer.write(b"ping")
            assert await loop.sock_recv(far, 4) == b"ping"
            await loop.sock_sendall(far, b"pong")
            assert await reader.readexactly(4) == b"pong"
            assert asyncio.all_tasks() == tasks  # none of the proxy's own came and stayed
            assert [c.task for c in w.server.connections] == [None]
            far.close()
            assert await reader.read() == b""
            writer.close()
            await asyncio.sleep(0.05)
        assert " up=4 down=4 " in w.log.lines[-1] and w.log.lines[-1].endswith(": closed")
        assert w.server.stats.ended == {"closed": 1} and w.server.stats.active == 0
        assert sum(w.server.stats.dials.counts) == 1
        assert sum(w.server.stats.handshakes.counts) == 1
        upstream.close()

    run(test())


def test_a_client_gone_mid_handshake_still_gets_its_line() -> None:
    async def test() -> None:
        async with world(dialer=Loopback()) as w:
            reader, writer = await w.connect()
            writer.write(b"\x05\x01\x00")
            assert await reader.readexactly(2) == b"\x05\x00"
            writer.close()  # before any request
            await asyncio.sleep(0.1)
            assert w.server.stats.active == 0
        assert len(w.log.lines) == 1
        assert w.log.lines[0].endswith(": bad handshake: client closed the connection "
                                       "mid-handshake"), w.log.lines
        assert w.server.stats.ended == {"refused: bad handshake": 1}
        assert sum(w.server.stats.handshakes.counts) == 0

    run(test())


def test_a_refused_connect_is_answered_and_logged() -> None:
    async def test() -> None:
        closed = target()
        port = closed.getsockname()[1]
        closed.close()  # nothing listens there now
        async with world(dialer=Loopback()) as w:
            reader, _, reply = await socks(w, b"127.0.0.1", port)
            assert reply[1] == Reply.CONNECTION_REFUSED and await reader.read() == b""
            await asyncio.sleep(0.05)
        assert w.log.lines[-1].endswith(f"dial failed: 127.0.0.1 port {port}: Connection "
                                        "refused"), w.log.lines
        assert w.server.stats.ended == {"refused: dial refused": 1}
        assert sum(w.server.stats.dials.counts) == 1

    run(test())


def test_a_connect_in_flight_times_out() -> None:
    async def test() -> None:
        listener, filler = full_target()
        port = listener.getsockname()[1]
        async with world(dialer=Loopback(timeout=0.3)) as w:
            started = asyncio.get_running_loop().time()
            reader, _, reply = await socks(w, b"127.0.0.1", port)
            assert reply[1] == Reply.TTL_EXPIRED and await reader.read() == b""
            assert asyncio.get_running_loop().time() - started >= 0.3
            await asyncio.sleep(0.05)
        assert w.log.lines[-1].endswith(f"dial failed: 127.0.0.1 port {port}: no answer "
                                        "within 0.3 s"), w.log.lines
        assert w.server.stats.ended == {"refused: dial timeout": 1}
        filler.close()
        listener.close()

    run(test())


def test_the_server_stopping_ends_every_connection_with_its_line() -> None:
    async def test() -> None:
        listener, filler = full_target()
        upstream = target()
        async with world(dialer=Loopback()) as w:
            silent = await w.connect()  # mid-handshake
            socks_greeted = await w.connect()
            socks_greeted[1].write(b"\x05\x01\x00\x05\x01\x00\x01\x7f\x00\x00\x01"
                                   + listener.getsockname()[1].to_bytes(2, "big"))  # dialing
            tunnel = await socks(w, b"127.0.0.1", upstream.getsockname()[1])  # relaying
            assert tunnel[2][1] == Reply.SUCCEEDED
            await asyncio.sleep(0.1)
            assert w.server.stats.active == 3
        assert w.server.stats.active == 0 and w.server.stats.tunnels == 0
        assert w.server.stats.ended == {"shutdown": 3}
        assert len(w.log.lines) == 3
        assert all(line.endswith(": proxy shutting down") for line in w.log.lines)
        assert await silent[0].read() == b""
        assert await socks_greeted[0].read() == b"\x05\x00"  # the method, then nothing
        assert await tunnel[0].read() == b""
        for sock in (filler, listener, upstream):
            sock.close()

    run(test())


def test_a_rest_the_upstream_socket_did_not_take_is_sent_by_a_writer() -> None:
    async def test() -> None:
        loop = asyncio.get_running_loop()
        upstream = target(rcvbuf=4096)
        port = upstream.getsockname()[1]
        payload = bytes(range(256)) * 48  # 12 kB pipelined behind the request
        async with world(dialer=Loopback(sndbuf=4096)) as w:
            reader, writer = await w.connect()
            writer.write(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n".encode() + payload)
            assert await reader.readuntil(b"\r\n\r\n") == (b"HTTP/1.1 200 Connection "
                                                           b"established\r\n\r\n")
            far, _ = await loop.sock_accept(upstream)
            await asyncio.sleep(0.1)  # the proxy's writer waits for room
            got = b""
            while len(got) < len(payload):
                got += await asyncio.wait_for(loop.sock_recv(far, 65536), 5)
            assert got == payload
            far.close()
            writer.close()
            await asyncio.sleep(0.05)
        assert f" up={len(payload)} down=0 " in w.log.lines[-1], w.log.lines
        assert w.log.lines[-1].endswith(": closed") or "reset" in w.log.lines[-1]
        upstream.close()

    run(test())


class Detour(Loopback):
    """Tries 127.0.0.2 first, where nothing listens, then what was asked for."""

    def routed(self, addresses: Sequence[Address]) -> list[Address]:
        return [ipaddress.ip_address("127.0.0.2"), *addresses]


def test_a_refused_address_is_followed_by_the_next() -> None:
    async def test() -> None:
        loop = asyncio.get_running_loop()
        upstream = target()
        port = upstream.getsockname()[1]
        async with world(dialer=Detour()) as w:
            reader, writer, reply = await socks(w, b"127.0.0.1", port)
            assert reply[1] == Reply.SUCCEEDED
            far, _ = await loop.sock_accept(upstream)
            far.close()
            assert await reader.read() == b""
            writer.close()
            await asyncio.sleep(0.05)
        assert f" addr=127.0.0.1:{port} " in w.log.lines[-1], w.log.lines
        assert w.server.stats.ended == {"closed": 1}
        upstream.close()

    run(test())
