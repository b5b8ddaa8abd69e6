"""The splice relay on socket pairs (and loopback TCP where resets matter): bytes both ways,
half-close, resets, idle timeout, and pipes held only while bytes are in flight."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tsproxy.proxy.pipes import PipePool
from tsproxy.proxy.relay import CLOSED, IDLE, Tunnel

pytestmark = pytest.mark.unit

Pair = tuple[socket.socket, socket.socket]


def run(test: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(test(), 20))


def pairs() -> tuple[Pair, Pair]:
    """(client app, proxy's client side), (proxy's upstream side, server app)."""
    client, proxy_client = socket.socketpair()
    proxy_upstream, server = socket.socketpair()
    for sock in (client, proxy_client, proxy_upstream, server):
        sock.setblocking(False)
    return (client, proxy_client), (proxy_upstream, server)


async def read_all(sock: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    data = b""
    while chunk := await loop.sock_recv(sock, 1 << 20):
        data += chunk
    return data


def test_bytes_both_ways_with_half_close() -> None:
    async def test() -> None:
        loop = asyncio.get_running_loop()
        pool = PipePool()
        (client, proxy_client), (proxy_upstream, server) = pairs()
        tunnel = Tunnel(loop, proxy_client, proxy_upstream, pool)
        done = tunnel.start()
        upload, download = os.urandom(3 << 20), os.urandom(5 << 20)

        async def client_side() -> bytes:
            await loop.sock_sendall(client, upload)
            client.shutdown(socket.SHUT_WR)  # half-close: the download must still arrive
            return await read_all(client)

        async def server_side() -> bytes:
            received = await read_all(server)  # ends only when the client's EOF came through
            await loop.sock_sendall(server, download)
            server.shutdown(socket.SHUT_WR)
            return received

        got_download, got_upload = await asyncio.gather(client_side(), server_side())
        assert got_upload == upload and got_download == download
        assert await done == CLOSED
        assert (tunnel.bytes_up, tunnel.bytes_down) == (len(upload), len(download))
        # Every pipe went back to the pool: nothing is held once the bytes have moved.
        assert tunnel.up.pipe is None and tunnel.down.pipe is None
        assert pool.idle == pool.created
        pool.clear()

    run(test)


def test_idle_tunnel_holds_no_pipe_and_times_out() -> None:
    async def test() -> None:
        loop = asyncio.get_running_loop()
        pool = PipePool()
        (client, proxy_client), (proxy_upstream, server) = pairs()
        tunnel = Tunnel(loop, proxy_client, proxy_upstream, pool, idle_timeout=0.3)
        done = tunnel.start()
        await loop.sock_sendall(client, b"ping")
        assert await loop.sock_recv(server, 10) == b"ping"
        assert tunnel.up.pipe is None and tunnel.down.pipe is None
        started = loop.time()
        assert await done == IDLE
        assert 0.25 <= loop.time() - started <= 1.0
        pool.clear()

    run(test)


def test_activity_keeps_the_tunnel_open() -> None:
    async def test() -> None:
        loop = asyncio.get_running_loop()
        (client, proxy_client), (proxy_upstream, server) = pairs()
        tunnel = Tunnel(loop, proxy_client, proxy_upstream, PipePool(), idle_timeout=0.3)
        done = tunnel.start()
        for _ in range(6):
            await loop.sock_sendall(client, b"x")
            assert await loop.sock_recv(server, 10) == b"x"
            await asyncio.sleep(0.1)
        assert not done.done()
        tunnel.close("test over")
        assert await done == "test over"

    run(test)


def tcp_pair(listener: socket.socket) -> Pair:
    out = socket.create_connection(listener.getsockname())
    inside, _ = listener.accept()
    out.setblocking(False)
    inside.setblocking(False)
    return out, inside


def test_a_reset_is_passed_on_as_a_reset() -> None:
    async def test() -> None:
        loop = asyncio.get_running_loop()
        with socket.create_server(("127.0.0.1", 0)) as listener:
            client, proxy_client = tcp_pair(listener)
            proxy_upstream, server = tcp_pair(listener)
        tunnel = Tunnel(loop, proxy_client, proxy_upstream, PipePool())
        done = tunnel.start()
        # The client vanishes with a reset; the server must see one too, not a clean EOF.
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        outcome = await done
        assert outcome == "client econnreset"
        proxy_client.close()
        proxy_upstream.close()
        with pytest.raises(ConnectionResetError):
            await read_all(server)

    run(test)


def test_out_of_descriptors_for_a_pipe_waits_instead_of_failing() -> None:
    async def test() -> None:
        loop = asyncio.get_running_loop()
        pool = PipePool()
        real_take = pool.take
        failures = [OSError(24, "Too many open files")] * 2

        def take() -> tuple[int, int]:
            if failures:
                raise failures.pop()
            return real_take()

        pool.take = take  # type: ignore[method-assign]
        (client, proxy_client), (proxy_upstream, server) = pairs()
        Tunnel(loop, proxy_client, proxy_upstream, pool).start()
        await loop.sock_sendall(client, b"later")
        assert await asyncio.wait_for(loop.sock_recv(server, 10), 2) == b"later"
        assert not failures

    run(test)


def test_pool_keeps_at_most_its_share() -> None:
    pool = PipePool(keep=2)
    pipes = [pool.take() for _ in range(4)]
    for pipe in pipes:
        pool.give(pipe)
    assert pool.idle == 2
    assert pool.size >= 64 * 1024
    pool.clear()
    assert pool.idle == 0
