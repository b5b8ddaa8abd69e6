"""GET /proxy.pac answered by the server itself (loopback, no root): the text for the
arrival address, the client checks without the login, one log line and a counter."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest
from test_proxy_server import run, world

from tsproxy.proxy.access import Users
from tsproxy_generator.model import Listen

pytestmark = pytest.mark.unit

TEXT = 'function FindProxyForURL(url, host) { return "DIRECT"; }\n'


class Source:
    """A PacSource that remembers where each request arrived."""

    def __init__(self, error: OSError | None = None) -> None:
        self.arrivals: list[Listen] = []
        self.error = error

    def __call__(self, arrival: Listen) -> str:
        self.arrivals.append(arrival)
        if self.error is not None:
            raise self.error
        return TEXT + f"// {arrival}\n"


async def fetch(address: tuple[str, int], request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(*address)
    writer.write(request)
    answer = await reader.read()
    writer.close()
    return answer


GET = b"GET /proxy.pac HTTP/1.1\r\nHost: x\r\n\r\n"


def test_served_for_the_arrival_address_without_a_login() -> None:
    source = Source()

    async def test() -> None:
        async with world(pac=source, users=Users({"alice": b"s3cret"})) as w:
            answer = await fetch(w.address, GET)
            head, _, body = answer.partition(b"\r\n\r\n")
            port = w.address[1]
            assert body == (TEXT + f"// 127.0.0.1:{port}\n").encode()
            assert head.split(b"\r\n") == [
                b"HTTP/1.1 200 OK", b"Content-Type: application/x-ns-proxy-autoconfig",
                b"Content-Length: %d" % len(body), b"Cache-Control: no-cache",
                b"Connection: close"]
            assert source.arrivals == [Listen(ipaddress.ip_address("127.0.0.1"), port)]
            head_only = await fetch(w.address, GET.replace(b"GET", b"HEAD"))
            assert head_only == head + b"\r\n\r\n"
            await asyncio.sleep(0.05)
        lines = [line for line in w.log.lines if "/proxy.pac" in line]
        assert len(lines) == 2
        assert lines[0].startswith("client=127.0.0.1:") and " http " in lines[0]
        assert lines[0].endswith(f": GET /proxy.pac: served ({len(body)} bytes)")
        assert lines[1].endswith(f": HEAD /proxy.pac: served ({len(body)} bytes)")
        assert w.server.stats.ended == {"pac": 2}

    run(test())


def test_clients_outside_allow_clients_get_403() -> None:
    source = Source()

    async def test() -> None:
        async with world(pac=source, clients=(ipaddress.ip_network("10.0.0.0/8"),)) as w:
            answer = await fetch(w.address, GET)
            assert answer.startswith(b"HTTP/1.1 403 Forbidden\r\n")
            await asyncio.sleep(0.05)
        assert source.arrivals == []
        assert w.log.lines[-1].endswith(
            "refused (HTTP 403): GET /proxy.pac: client address not in allow_clients")
        assert w.server.stats.ended == {"refused: client": 1}

    run(test())


def test_unreadable_confs_are_a_500_and_a_log_line() -> None:
    async def test() -> None:
        async with world(pac=Source(PermissionError(13, "Permission denied"))) as w:
            answer = await fetch(w.address, GET)
            assert answer.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
            await asyncio.sleep(0.05)
        assert "GET /proxy.pac: cannot build it: [Errno 13] Permission denied" in \
            w.log.lines[-1]

    run(test())


def test_without_a_source_it_is_404() -> None:
    async def test() -> None:
        async with world() as w:
            assert (await fetch(w.address, GET)).startswith(b"HTTP/1.1 404 Not Found\r\n")

    run(test())
