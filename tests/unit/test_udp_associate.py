"""The UDP ASSOCIATE relay on loopback (no namespaces, no root), its dialer replaced: the
header both ways, the client's port fixed by its first datagram, strangers and unsolicited
answers dropped, and the three ways an association ends."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest
from test_proxy_server import LOOPBACK, Lines, run, served
from test_proxy_server import world as proxy_world

from tsproxy.localapi import LocalAPI
from tsproxy.names import Resolver
from tsproxy.proto.socks5_udp import datagram_header
from tsproxy.proxy import datagrams
from tsproxy.proxy.associate import UdpAssociate
from tsproxy.proxy.egress import Dialer, Policy
from tsproxy.proxy.stats import Record, Stats
from tsproxy_generator.addresses import Address

pytestmark = pytest.mark.unit

LOCAL = "127.0.0.1"


class LoopbackDialer(Dialer):
    """Sockets on loopback: every route is there, no device to bind to."""

    def __init__(self) -> None:
        super().__init__("lo")
        self.routes.covers = lambda address: True  # type: ignore[method-assign]

    def unconnected(self, version: int) -> socket.socket:
        return socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)


@dataclass
class World:
    relay: UdpAssociate
    address: tuple[str, int]
    target: socket.socket  # a UDP server in "the tailnet"
    stats: Stats
    log: Lines

    async def associate(self, port: int = 0) -> tuple[asyncio.Task[None], socket.socket, Record]:
        """An association as the server makes one; the client's end of its connection."""
        loop = asyncio.get_running_loop()
        control, client_end = socket.socketpair()
        control.setblocking(False)
        client_end.setblocking(False)
        record = Record(f"{LOCAL}:1", loop.time())
        task = asyncio.ensure_future(self.relay.hold(control, LOCAL, port, record, b"ok"))
        assert await loop.sock_recv(client_end, 2) == b"ok"
        return task, client_end, record


def udp() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOCAL, 0))
    sock.setblocking(False)
    return sock


async def receive(sock: socket.socket, timeout: float = 2) -> tuple[bytes, tuple[str, int]]:
    async with asyncio.timeout(timeout):
        while True:
            try:
                data, source = sock.recvfrom(65535)
                return data, source[:2]
            except BlockingIOError:
                await asyncio.sleep(0.005)


async def silent(sock: socket.socket) -> bool:
    with pytest.raises(TimeoutError):
        await receive(sock, 0.2)
    return True


@asynccontextmanager
async def world(idle: float = 30) -> AsyncIterator[World]:
    sock, target = udp(), udp()
    stats, log = Stats("fgpu", f"{LOCAL}:0"), Lines()
    relay = UdpAssociate(sock, resolver=Resolver("fgpu", LocalAPI("/nonexistent/ts.sock")),
                         dialer=LoopbackDialer(), policy=Policy(None, LOOPBACK, is_local=_never),
                         stats=stats, log=log, idle_timeout=idle)
    with sock, target:
        async with served(relay.serve()):
            yield World(relay, sock.getsockname(), target, stats, log)


def _never(address: Address) -> bool:
    return False


def test_datagrams_both_ways_and_strangers() -> None:
    async def scenario() -> None:
        async with world() as w:
            task, client_end, record = await w.associate()
            client, other_port = udp(), udp()
            to_target = datagram_header(*w.target.getsockname())
            client.sendto(to_target + b"ping", w.address)
            data, upstream = await receive(w.target)
            assert data == b"ping"
            w.target.sendto(b"pong", upstream)
            assert await receive(client) == (to_target + b"pong", w.address)
            # The first datagram fixed the port: the same address from another port is a
            # stranger; a socket that was never sent to cannot answer through the relay.
            other_port.sendto(to_target + b"sneak", w.address)
            intruder = udp()
            intruder.sendto(b"unsolicited", upstream)
            assert await silent(w.target) and await silent(client)
            assert w.stats.datagrams_dropped == {"stranger": 1, "unsolicited": 1}
            client_end.close()  # the connection ends the association
            await task
            assert (record.kind, record.up, record.down) == ("closed", 4, 4)
            client.sendto(to_target + b"late", w.address)
            assert await silent(w.target)
            assert w.stats.datagrams_dropped["stranger"] == 2
            for sock in (client, other_port, intruder):
                sock.close()
    run(scenario())


def test_the_port_named_in_the_request_is_the_only_one() -> None:
    async def scenario() -> None:
        async with world() as w:
            client, first = udp(), udp()
            task, client_end, _ = await w.associate(client.getsockname()[1])
            to_target = datagram_header(*w.target.getsockname())
            first.sendto(to_target + b"not me", w.address)  # would have fixed an open port
            client.sendto(to_target + b"me", w.address)
            assert (await receive(w.target))[0] == b"me"
            assert await silent(w.target)
            client_end.close()
            await task
            client.close()
            first.close()
    run(scenario())


def test_refusals_are_counted_and_told_once() -> None:
    async def scenario() -> None:
        async with world() as w:
            task, client_end, _ = await w.associate()
            client = udp()
            for header in (b"\x00\x00\x01\x01\x7f\x00\x00\x01\x00\x35",  # a fragment
                           datagram_header("169.254.0.1", 53), datagram_header("224.0.0.1", 53),
                           b"\x00\x00\x00\x03\x0bnosuch.test\x00\x35"):  # not in the tailnet
                client.sendto(header + b"query", w.address)
            await asyncio.sleep(0.2)
            dropped = {key: value for key, value in w.stats.datagrams_dropped.items()}
            assert dropped.pop("fragment") == 1 and dropped.pop("egress") == 2
            assert list(dropped) == ["name"]
            told = [line.split(": ", 1)[1] for line in w.log.lines]
            assert [line.split(")")[0] for line in told] == [
                "datagram dropped (fragment", "datagram dropped (egress",
                "datagram dropped (name"]
            assert "224.0.0.1" not in "".join(told)
            client_end.close()
            await task
            client.close()
    run(scenario())


def test_idle_and_stop_end_associations(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datagrams, "SWEEP_EVERY", 0.05)

    async def scenario() -> None:
        async with world(idle=0.2) as w:
            task, client_end, record = await w.associate()
            await task
            assert (record.kind, record.outcome) == ("idle timeout", "idle 0.2 s")
            client_end.close()
            task, client_end, record = await w.associate()
            w.relay.stop()
            await task
            assert (record.kind, record.outcome) == ("shutdown", "proxy shutting down")
            client_end.close()
            task, client_end, record = await w.associate()  # after stop: at once
            await task
            assert record.kind == "shutdown"
            client_end.close()
    run(scenario())


def test_through_the_server() -> None:
    """The server hands a checked ASSOCIATE to the relay, BND being the address the client
    connected to; a proxy without the datagram socket (a unit from before) answers REP 7."""
    async def scenario() -> None:
        for with_socket in (True, False):
            async with proxy_world() as proxy, world() as w:
                proxy.server.udp = w.relay if with_socket else None
                reader, writer = await proxy.connect()
                writer.write(b"\x05\x01\x00\x05\x03\x00\x01" + bytes(6))
                answer = await reader.readexactly(12)
                if with_socket:
                    port = proxy.address[1].to_bytes(2, "big")
                    assert answer == b"\x05\x00\x05\x00\x00\x01\x7f\x00\x00\x01" + port
                else:
                    assert answer == b"\x05\x00\x05\x07\x00\x01" + bytes(6)
                    assert await reader.read() == b""
                writer.close()
                await asyncio.sleep(0.05)
            assert proxy.log.lines[-1].endswith(
                ": closed" if with_socket else
                ": refused (REP 7): UDP ASSOCIATE: no datagram socket on the proxy's port")
            assert " socks5 udp up=0 down=0 " in proxy.log.lines[-1]
    run(scenario())
