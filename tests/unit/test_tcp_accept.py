"""Accepting TCP: the listening sockets systemd hands over keep the socket unit's Backlog=
(neither the DNS responder nor the proxy calls listen() again, as asyncio.start_server
would, with 100), and the DNS responder's cap and fd shortage never leave a connection
waiting untimed in the kernel's queue."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Awaitable, Callable

import pytest
from test_proxy_server import BACKLOG, OutOfFiles, socks, world

from tsproxy.dns import server as dns_server
from tsproxy.dns.answer import Responder
from tsproxy.dns.server import DnsServer
from tsproxy.dns.zones import Zones

pytestmark = pytest.mark.unit

def backlog(sock: socket.socket) -> int:
    """sk_max_ack_backlog of a listening socket: Linux reports it as TCP_INFO's
    tcpi_sacked (after 8 one-byte fields and rto, ato, snd_mss, rcv_mss, unacked)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return int(struct.unpack_from("=I", info, 28)[0])


def test_backlog_reads_what_listen_set() -> None:
    with socket.create_server(("127.0.0.1", 0), backlog=BACKLOG) as sock:
        assert backlog(sock) == BACKLOG
        sock.listen(100)
        assert backlog(sock) == 100  # the measure can tell the two apart


async def served_and_closed(address: tuple[str, int]) -> None:
    """A connection the responder accepted: a 2-byte "query" is none, so it closes."""
    reader, writer = await asyncio.open_connection(*address)
    writer.write(b"\x00\x02\x00\x00")
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


def dns_check(test: Callable[[DnsServer, socket.socket], Awaitable[None]],
              listener: socket.socket) -> None:
    async def check() -> None:
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        server = DnsServer([udp, listener], Responder(Zones([])), log=lambda line: None)
        serving = asyncio.ensure_future(server.serve())
        try:
            await test(server, listener)
        finally:
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)
            listener.close()
            udp.close()
    asyncio.run(asyncio.wait_for(check(), 20))


def test_the_dns_responder_keeps_the_backlog() -> None:
    async def test(server: DnsServer, listener: socket.socket) -> None:
        await served_and_closed(listener.getsockname())
        assert backlog(listener) == BACKLOG
    dns_check(test, socket.create_server(("127.0.0.1", 0), backlog=BACKLOG))


def test_dns_over_the_cap_is_closed_at_once() -> None:
    async def test(server: DnsServer, listener: socket.socket) -> None:
        server.max_tcp = 1
        _held, holder = await asyncio.open_connection(*listener.getsockname())
        await asyncio.sleep(0.1)
        reader, writer = await asyncio.open_connection(*listener.getsockname())
        # Closed without waiting for TCP_IDLE, while the first one is held.
        assert await asyncio.wait_for(reader.read(), 2) == b""
        writer.close()
        holder.close()
    dns_check(test, socket.create_server(("127.0.0.1", 0)))


def test_dns_out_of_descriptors_pauses_and_then_accepts() -> None:
    async def test(server: DnsServer, listener: socket.socket) -> None:
        await served_and_closed(listener.getsockname())
        assert OutOfFiles.failures == 0
    OutOfFiles.failures = 3
    plain = socket.create_server(("127.0.0.1", 0))
    dns_check(test, OutOfFiles(fileno=plain.detach()))


def test_the_proxy_keeps_the_backlog() -> None:
    async def check() -> None:
        async with world() as w:
            _reader, writer, reply = await socks(w, b"127.0.0.1", w.echo_port)
            assert reply[1] == 0  # served
            writer.close()
            assert backlog(w.server.listener) == BACKLOG
    asyncio.run(check())


def test_the_tcp_cap_stays_below_the_fd_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    # Past the fd limit accept() fails and the connection waits in the kernel's queue with
    # no idle timer: the cap must close it at once instead.
    monkeypatch.setattr(dns_server.resource, "getrlimit", lambda kind: (1024, 524288))
    assert dns_server.tcp_cap() == 1024 - dns_server.FD_RESERVE
    monkeypatch.setattr(dns_server.resource, "getrlimit", lambda kind: (8192, 8192))
    assert dns_server.tcp_cap() == dns_server.MAX_TCP
