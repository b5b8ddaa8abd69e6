"""The server on loopback with its dial function replaced (no namespaces, no root): handshake,
access, caps, refusal codes, the log line and the counters."""

from __future__ import annotations

import asyncio
import base64
import errno
import ipaddress
import json
import os
import socket
from collections.abc import AsyncIterator, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tsproxy.localapi import LocalAPI
from tsproxy.names import Resolver
from tsproxy.proto import Reply
from tsproxy.proxy.access import ClientNetworks, Users
from tsproxy.proxy.egress import DialError, Policy
from tsproxy.proxy.limits import Limits
from tsproxy.proxy.pipes import PipePool
from tsproxy.proxy.server import Dial, PacSource, Server
from tsproxy.proxy.stats import Log, Stats, StatsFile
from tsproxy_generator.addresses import Address, Network

pytestmark = pytest.mark.unit

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)


class Lines(Log):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        self.lines.append(line)


@dataclass
class World:
    server: Server
    address: tuple[str, int]
    echo_port: int
    log: Lines
    dialed: list[tuple[list[str], int]] = field(default_factory=list)

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(*self.address)


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


class OutOfFiles(socket.socket):
    """A listening socket whose first accepts fail as a process out of descriptors sees."""

    failures = 3

    def accept(self) -> tuple[socket.socket, object]:
        if OutOfFiles.failures:
            OutOfFiles.failures -= 1
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        return super().accept()


BACKLOG = 777  # a socket unit's Backlog=, which serving must keep (test_tcp_accept.py)


@asynccontextmanager
async def world(*, users: Users | None = None, clients: Sequence[Network] = LOOPBACK,
                caps: tuple[int, int] = (100, 100), fail: Reply | None = None,
                handshake_timeout: float = 5, emfile: bool = False,
                pac: PacSource | None = None, dialer: Dial | None = None
                ) -> AsyncIterator[World]:
    """A server on loopback; `dialer` replaces the test's own dial function (which records
    what it dials and fails as `fail` says)."""
    echo_server = await asyncio.start_server(echo, "127.0.0.1", 0)
    echo_port = echo_server.sockets[0].getsockname()[1]
    listener = socket.create_server(("127.0.0.1", 0), backlog=BACKLOG)
    if emfile:
        listener = OutOfFiles(fileno=listener.detach())
    log = Lines()
    dialed: list[tuple[list[str], int]] = []

    async def dial(addresses: Sequence[Address], port: int) -> socket.socket:
        dialed.append(([str(a) for a in addresses], port))
        if fail is not None:
            raise DialError(fail, "as the test wants")
        sock = socket.socket()
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", echo_port))
        return sock

    server = Server(listener, resolver=Resolver("fgpu", LocalAPI("/nonexistent/ts.sock")),
                    dial=dialer or dial, policy=Policy(None, LOOPBACK), networks=ClientNetworks(clients),
                    users=users, identities=None, caps=Limits(*caps),
                    stats=Stats("fgpu", "127.0.0.1:0"), pool=PipePool(), log=log,
                    handshake_timeout=handshake_timeout, pac=pac)
    try:
        async with served(server.serve()):
            yield World(server, listener.getsockname(), echo_port, log, dialed)
    finally:
        listener.close()
        echo_server.close()
        server.pool.clear()


@asynccontextmanager
async def served(serve: Coroutine[Any, Any, None]) -> AsyncIterator[None]:
    """`serve` running (past its first step) until the block ends, then cancelled."""
    serving = asyncio.ensure_future(serve)
    await asyncio.sleep(0)
    try:
        yield
    finally:
        serving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await serving


def run(test: object) -> None:
    asyncio.run(asyncio.wait_for(test, 20))  # type: ignore[arg-type]


async def socks(w: World, host: bytes, port: int, login: tuple[str, str] | None = None
                ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    reader, writer = await w.connect()
    writer.write(b"\x05\x01\x02" if login else b"\x05\x01\x00")
    method = await reader.readexactly(2)
    if login:
        assert method == b"\x05\x02"
        user, password = (part.encode() for part in login)
        writer.write(bytes([1, len(user)]) + user + bytes([len(password)]) + password)
        status = await reader.readexactly(2)
        if status != b"\x01\x00":
            return reader, writer, status
    else:
        assert method == b"\x05\x00"
    try:
        request = b"\x01" + socket.inet_aton(host.decode())
    except OSError:
        request = b"\x03" + bytes([len(host)]) + host
    writer.write(b"\x05\x01\x00" + request + port.to_bytes(2, "big"))
    return reader, writer, await reader.readexactly(10)


def test_socks5_tunnel_with_half_close_and_log_line() -> None:
    async def test() -> None:
        async with world() as w:
            reader, writer, reply = await socks(w, b"127.0.0.1", w.echo_port)
            assert reply[:4] == b"\x05\x00\x00\x01"
            writer.write(b"hello")
            writer.write_eof()
            assert await reader.read() == b"hello"
            writer.close()
            await asyncio.sleep(0.05)
        assert w.dialed == [(["127.0.0.1"], w.echo_port)]
        line = w.log.lines[-1]
        assert line.startswith("client=127.0.0.1:") and " socks5 to=127.0.0.1:" in line
        assert " up=5 down=5 " in line and line.endswith(": closed")
        assert w.server.stats.ended == {"closed": 1} and w.server.stats.active == 0

    run(test())


def test_http_connect_with_pipelined_payload() -> None:
    async def test() -> None:
        async with world() as w:
            reader, writer = await w.connect()
            writer.write(f"CONNECT 127.0.0.1:{w.echo_port} HTTP/1.1\r\n\r\npipelined".encode())
            writer.write_eof()
            assert await reader.read() == b"HTTP/1.1 200 Connection established\r\n\r\npipelined"

    run(test())


def test_login_with_the_users_file() -> None:
    async def test() -> None:
        async with world(users=Users({"alice": b"s3cret"})) as w:
            _, _, reply = await socks(w, b"127.0.0.1", w.echo_port, ("alice", "s3cret"))
            assert reply[1] == 0
            _, _, status = await socks(w, b"127.0.0.1", w.echo_port, ("alice", "nope"))
            assert status == b"\x01\x01"
            reader, writer = await w.connect()
            token = base64.b64encode(b"alice:s3cret").decode()
            writer.write(f"CONNECT 127.0.0.1:{w.echo_port} HTTP/1.1\r\n"
                         f"Proxy-Authorization: Basic {token}\r\n\r\n".encode())
            assert (await reader.readline()).startswith(b"HTTP/1.1 200")
            await asyncio.sleep(0.05)
        assert any(" user=alice " in line for line in w.log.lines)
        assert w.server.stats.ended.get("refused: login") == 1

    run(test())


def test_an_empty_users_file_lets_nobody_in() -> None:
    async def test() -> None:
        async with world(users=Users({})) as w:
            reader, writer = await w.connect()
            writer.write(b"\x05\x01\x00")  # no login offered: refused
            assert await reader.read() == b"\x05\xff"
            _, _, status = await socks(w, b"127.0.0.1", w.echo_port, ("alice", ""))
            assert status == b"\x01\x01"

    run(test())


@pytest.mark.parametrize("reply, status", [
    (Reply.CONNECTION_REFUSED, b"502"), (Reply.NETWORK_UNREACHABLE, b"502"),
    (Reply.HOST_UNREACHABLE, b"502"), (Reply.TTL_EXPIRED, b"504"),
    (Reply.GENERAL_FAILURE, b"502"),
])
def test_dial_failures_answer_with_their_code(reply: Reply, status: bytes) -> None:
    async def test() -> None:
        async with world(fail=reply) as w:
            reader, _, answer = await socks(w, b"127.0.0.1", 80)
            assert answer[1] == reply and await reader.read() == b""
            reader, writer = await w.connect()
            writer.write(b"CONNECT 127.0.0.1:80 HTTP/1.1\r\n\r\n")
            assert (await reader.read()).split(b" ")[1] == status

    run(test())


def test_egress_policy_and_names_are_decided_before_dialing() -> None:
    async def test() -> None:
        async with world() as w:
            _, _, answer = await socks(w, b"100.100.100.100", 80)
            assert answer[1] == Reply.NOT_ALLOWED
            _, _, answer = await socks(w, b"127.0.0.1.fgpu", w.echo_port)
            assert answer[1] == Reply.SUCCEEDED  # allowed here: the test's allow_egress
            _, _, answer = await socks(w, b"web.fgpu", 80)  # tailscaled is down
            assert answer[1] == Reply.GENERAL_FAILURE
            _, _, answer = await socks(w, b"a.b.fgpu", 80)
            assert answer[1] == Reply.HOST_UNREACHABLE
            await asyncio.sleep(0.05)
        assert w.dialed == [(["127.0.0.1"], w.echo_port)]

    run(test())


def test_clients_outside_allow_clients() -> None:
    async def test() -> None:
        async with world(clients=(ipaddress.ip_network("100.64.0.0/10"),)) as w:
            _, _, answer = await socks(w, b"127.0.0.1", w.echo_port)
            assert answer[1] == Reply.NOT_ALLOWED
        assert w.dialed == []

    run(test())


def test_per_client_cap_refuses_cleanly() -> None:
    async def test() -> None:
        async with world(caps=(100, 1)) as w:
            _reader, writer, answer = await socks(w, b"127.0.0.1", w.echo_port)
            assert answer[1] == 0
            _, _, second = await socks(w, b"127.0.0.1", w.echo_port)
            assert second[1] == Reply.NOT_ALLOWED
            reader2, writer2 = await w.connect()
            writer2.write(b"CONNECT 127.0.0.1:80 HTTP/1.1\r\n\r\n")
            assert (await reader2.read()).startswith(b"HTTP/1.1 503 ")
            writer.close()
            await asyncio.sleep(0.05)
            _, _, third = await socks(w, b"127.0.0.1", w.echo_port)
            assert third[1] == 0

    run(test())


def test_handshake_timeout_and_garbage() -> None:
    async def test() -> None:
        async with world(handshake_timeout=0.2) as w:
            reader, writer = await w.connect()
            writer.write(b"\x05\x01")  # and then nothing
            assert await reader.read() == b""
            reader, writer = await w.connect()
            writer.write(b"\x16\x03\x01")  # TLS: not ours
            assert await reader.read() == b""
            await asyncio.sleep(0.05)
        assert any(line.endswith(": handshake timeout: not complete within 0.2 s")
                   for line in w.log.lines)
        assert any("bad handshake: not SOCKS5 or HTTP (first byte 0x16)" in line
                   for line in w.log.lines)

    run(test())


def test_the_counters_file(tmp_path: Path) -> None:
    async def test() -> None:
        async with world() as w:
            _, _writer, _ = await socks(w, b"100.100.100.100", 80)
            await asyncio.sleep(0.05)
            stats_file = StatsFile(w.server.stats, str(tmp_path / "stats.json"))
            stats_file.write()
        written = json.loads((tmp_path / "stats.json").read_text())
        assert written["name"] == "fgpu" and written["pid"] == os.getpid()
        assert written["total"] == 1 and written["refused"] == {"egress": 1}

    run(test())


def test_out_of_descriptors_pauses_accepting_and_goes_on() -> None:
    async def test() -> None:
        OutOfFiles.failures = 3
        async with world(emfile=True) as w:
            loop = asyncio.get_running_loop()
            started = loop.time()
            _reader, _writer, answer = await socks(w, b"127.0.0.1", w.echo_port)
            assert answer[1] == 0
            # Three failures, each followed by a pause of 0.1 s: then served as usual.
            assert loop.time() - started >= 0.25
        assert any(line.startswith("accepting paused 1 time(s) for 0.1 s: Too many open files")
                   for line in w.log.lines), w.log.lines

    run(test())


def test_absolute_form_is_forwarded_without_an_established_line() -> None:
    async def test() -> None:
        async with world(users=Users({"alice": b"s3cret"})) as w:
            reader, writer = await w.connect()
            token = base64.b64encode(b"alice:s3cret").decode()
            writer.write(f"POST http://127.0.0.1:{w.echo_port}/x HTTP/1.1\r\n"
                         f"Proxy-Authorization: Basic {token}\r\nContent-Length: 4\r\n"
                         "Proxy-Connection: keep-alive\r\n\r\nbody".encode())
            writer.write_eof()
            # The echo server plays the origin: it shows what the proxy sent it.
            assert await reader.read() == (
                f"POST /x HTTP/1.1\r\nHost: 127.0.0.1:{w.echo_port}\r\nContent-Length: 4\r\n"
                "Connection: close\r\n\r\nbody").encode()
            writer.close()
            await asyncio.sleep(0.05)
        assert w.dialed == [(["127.0.0.1"], w.echo_port)]
        line = w.log.lines[-1]
        assert f" http user=alice to=127.0.0.1:{w.echo_port} " in line, line
        assert line.endswith(": closed")

    run(test())
