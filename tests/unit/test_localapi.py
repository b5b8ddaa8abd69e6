"""The LocalAPI client against the fake tailscaled, and its HTTP reader against raw bytes."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import dnslib  # type: ignore[import-untyped]
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the fake lives there

from fake_localapi import FakeLocalAPI, make_node, make_status, make_whois

from tsproxy.localapi import LocalAPI, LocalAPIError, read_response

pytestmark = pytest.mark.unit

T = TypeVar("T")
STATUS = make_status("gw", ["100.64.0.1", "fd7a:115c:a1e0::1"], peers={"gpu": ["100.64.0.7"]})
WHOIS = {"100.64.0.9": make_whois("alice@example.com", "laptop", ["100.64.0.9"]),
         "fd7a:115c:a1e0::9": make_whois("bob@example.com", "phone", ["fd7a:115c:a1e0::9"])}
DNS = {"example.com": ["192.0.2.1", "2001:db8::1"], "broken.test": "SERVFAIL"}


def run(coroutine: Awaitable[T]) -> T:
    return asyncio.run(coroutine)  # type: ignore[arg-type]


@pytest.fixture
def sock(tmp_path: Path) -> str:
    return str(tmp_path / "tailscaled.sock")


@pytest.fixture(params=[False, True], ids=["content-length", "chunked"])
def fake(request: pytest.FixtureRequest, sock: str) -> Iterator[FakeLocalAPI]:
    with FakeLocalAPI(sock, STATUS, WHOIS, DNS, chunked=request.param) as server:
        yield server


def test_status_is_the_daemons_json(fake: FakeLocalAPI) -> None:
    assert run(LocalAPI(fake.socket_path).status()) == STATUS


def test_requests_carry_what_tailscaled_checks(fake: FakeLocalAPI) -> None:
    run(LocalAPI(fake.socket_path).status())
    [request] = fake.requests
    assert request.target == "/localapi/v0/status"
    assert request.headers["host"] == "local-tailscaled.sock"
    assert "referer" not in request.headers and "origin" not in request.headers


def test_big_status_survives_both_framings(fake: FakeLocalAPI) -> None:
    fake.status = make_status("gw", ["100.64.0.1"], peers=[
        make_node(f"node{i}", [f"100.64.{i // 250}.{i % 250 + 1}"]) for i in range(2000)])
    status = run(LocalAPI(fake.socket_path).status())
    assert len(json.dumps(status)) > 200_000
    assert status == fake.status


@pytest.mark.parametrize("addr, login", [
    ("100.64.0.9", "alice@example.com"),
    ("100.64.0.9:41641", "alice@example.com"),
    ("fd7a:115c:a1e0::9", "bob@example.com"),
    ("[fd7a:115c:a1e0::9]:5555", "bob@example.com"),
])
def test_whois_hit(fake: FakeLocalAPI, addr: str, login: str) -> None:
    answer = run(LocalAPI(fake.socket_path).whois(addr))
    assert answer is not None and answer["UserProfile"]["LoginName"] == login
    assert fake.requests[-1].target.startswith("/localapi/v0/whois?addr=")


@pytest.mark.parametrize("addr", ["100.64.0.10", "100.64.0.10:22", "[fd7a:115c:a1e0::10]:22"])
def test_whois_miss_is_none(fake: FakeLocalAPI, addr: str) -> None:
    assert run(LocalAPI(fake.socket_path).whois(addr)) is None


@pytest.mark.parametrize("addr", ["not-an-ip", "[100.64.0.9]:22", "100.64.0.9:99999"])
def test_whois_bad_address_is_an_error(fake: FakeLocalAPI, addr: str) -> None:
    with pytest.raises(LocalAPIError, match=r"HTTP 400: invalid 'addr' parameter") as caught:
        run(LocalAPI(fake.socket_path).whois(addr))
    assert caught.value.status == 400


def test_dns_query_returns_the_raw_reply(fake: FakeLocalAPI) -> None:
    reply = dnslib.DNSRecord.parse(run(LocalAPI(fake.socket_path).dns_query("example.com", "AAAA")))
    assert [str(rr.rdata) for rr in reply.rr] == ["2001:db8::1"]
    assert fake.requests[-1].target == "/localapi/v0/dns-query?name=example.com&type=AAAA"


def test_dns_query_passes_rcodes_through(fake: FakeLocalAPI) -> None:
    api = LocalAPI(fake.socket_path)
    assert dnslib.DNSRecord.parse(run(api.dns_query("nx.test", "A"))).header.rcode == 3
    assert dnslib.DNSRecord.parse(run(api.dns_query("broken.test", "A"))).header.rcode == 2


def test_dns_query_escapes_the_name(fake: FakeLocalAPI) -> None:
    run(LocalAPI(fake.socket_path).dns_query("a&type=MX b", "A"))
    assert fake.requests[-1].target == "/localapi/v0/dns-query?name=a%26type%3DMX%20b&type=A"


@pytest.mark.parametrize("endpoint, call", [
    ("status", lambda api: api.status()),
    ("whois", lambda api: api.whois("100.64.0.9")),
    ("dns-query", lambda api: api.dns_query("example.com", "A")),
])
@pytest.mark.parametrize("code", [403, 500])
def test_error_statuses_raise(sock: str, endpoint: str,
                              call: Callable[[LocalAPI], Awaitable[Any]], code: int) -> None:
    with FakeLocalAPI(sock, STATUS, WHOIS, DNS, errors={endpoint: code}), \
            pytest.raises(LocalAPIError, match=rf"tailscaled.sock: HTTP {code}: {endpoint} failed"):
        run(call(LocalAPI(sock)))


def test_daemon_down_fails_at_once(sock: str) -> None:
    started = time.monotonic()
    with pytest.raises(LocalAPIError, match=r"tailscaled is not running \(no socket\)"):
        run(LocalAPI(sock).status())
    assert time.monotonic() - started < 0.5


def test_daemon_crashed_fails_at_once(sock: str) -> None:
    FakeLocalAPI(sock).start().stop(unlink=False)
    assert Path(sock).is_socket()
    started = time.monotonic()
    with pytest.raises(LocalAPIError, match=r"tailscaled is not running \(connection refused\)"):
        run(LocalAPI(sock).status())
    assert time.monotonic() - started < 0.5


def test_not_a_socket_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("")  # Linux refuses connect() to a non-socket
    with pytest.raises(LocalAPIError, match=r"plain: tailscaled is not running"):
        run(LocalAPI(str(tmp_path / "plain")).status())


def test_overlong_socket_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(LocalAPIError, match="OSError: AF_UNIX path too long"):
        run(LocalAPI(str(tmp_path / ("x" * 120))).status())


def test_slow_daemon_times_out_within_the_bound(sock: str) -> None:
    with FakeLocalAPI(sock, slow=True) as fake:
        started = time.monotonic()
        with pytest.raises(LocalAPIError, match=r"no answer within 0.3 s"):
            run(LocalAPI(sock, timeout=0.3).status())
        elapsed = time.monotonic() - started
        assert fake.count("status") == 1
    assert 0.3 <= elapsed < 1.0


def test_default_timeouts_are_short() -> None:
    api = LocalAPI("/nonexistent")
    assert (api.connect_timeout, api.timeout) == (2.0, 5.0)


def serve_raw(sock: str, answer: bytes) -> Callable[[], Awaitable[tuple[int, bytes]]]:
    """A one-shot server that reads the request head, writes ``answer`` and hangs up."""
    async def main() -> tuple[int, bytes]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answer)
            await writer.drain()
            writer.close()

        async with await asyncio.start_unix_server(handle, sock):
            return await LocalAPI(sock, timeout=2).get("status")
    return main


def test_body_up_to_eof_without_length(sock: str) -> None:
    answer = b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"a\": 1}"
    assert run(serve_raw(sock, answer)()) == (200, b'{"a": 1}')


@pytest.mark.parametrize("body, why", [
    (b"[1, 2]", "the answer is not a JSON object"),
    (b"{nope", "the answer is not a JSON object"),
])
def test_status_needs_a_json_object(sock: str, body: bytes, why: str) -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)

    async def main() -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answer)
            writer.close()

        async with await asyncio.start_unix_server(handle, sock):
            await LocalAPI(sock).status()

    with pytest.raises(LocalAPIError, match=why):
        run(main())


@pytest.mark.parametrize("payload, why", [
    ({"Bytes": "not base64!"}, "Bytes is not base64"),
    ({"Bytes": 12}, "Bytes is not a string"),
])
def test_dns_query_rejects_bad_bytes(sock: str, payload: dict[str, Any], why: str) -> None:
    body = json.dumps(payload).encode()
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)

    async def main() -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answer)
            writer.close()

        async with await asyncio.start_unix_server(handle, sock):
            await LocalAPI(sock).dns_query("x", "A")

    with pytest.raises(LocalAPIError, match=why):
        run(main())


def test_dns_query_null_bytes_is_empty(sock: str) -> None:
    body = b'{"Bytes": null, "Resolvers": null}'
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)

    async def main() -> bytes:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answer)
            writer.close()

        async with await asyncio.start_unix_server(handle, sock):
            return await LocalAPI(sock).dns_query("x", "A")

    assert run(main()) == b""


@pytest.mark.parametrize("answer", [
    b"garbage\r\n\r\n",
    b"HTTP/1.1 2OO OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
    b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x2\r\n{}\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}XX0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n",
    b"HTTP/1.1 200 OK\r\n" + b"X: " + b"y" * 70000 + b"\r\n\r\n",
    b"",
], ids=["no-status-line", "bad-code", "bad-length", "short-body", "bad-header",
        "bad-chunk-size", "chunk-without-crlf", "no-last-chunk", "huge-header", "hang-up"])
def test_malformed_answers_are_errors(sock: str, answer: bytes) -> None:
    with pytest.raises(LocalAPIError, match=r"tailscaled\.sock: "):
        run(serve_raw(sock, answer)())


def parse(data: bytes) -> tuple[int, bytes]:
    async def main() -> tuple[int, bytes]:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        return await read_response(reader)
    return run(main())


@pytest.mark.parametrize("data, expected", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", (200, b"{}")),
    (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}trailing", (200, b"{}")),
    (b"HTTP/1.1 404 Not Found\r\nContent-Length: 21\r\n\r\nno match for IP:port\n",
     (404, b"no match for IP:port\n")),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"3;ext=1\r\n{\"a\r\nA\r\n\": 1234567\r\n1\r\n}\r\n0\r\nTrailer: x\r\n\r\n",
     (200, b'{"a": 1234567}')),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n0\r\n\r\n", (200, b"")),
    (b"HTTP/1.1 204 No Content\r\n\r\n", (204, b"")),
    (b"HTTP/1.0 200 OK\r\n\r\nto the end", (200, b"to the end")),
], ids=["length", "length-ignores-extra", "404", "chunked-ext-trailer", "chunked-empty",
        "204", "until-eof"])
def test_read_response(data: bytes, expected: tuple[int, bytes]) -> None:
    assert parse(data) == expected


def test_read_response_caps_the_body(monkeypatch: pytest.MonkeyPatch) -> None:
    from tsproxy import localapi
    monkeypatch.setattr(localapi, "MAX_BODY", 10)
    for data in (b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n" + b"x" * 11,
                 b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nb\r\n" + b"x" * 11,
                 b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 11):
        with pytest.raises(ValueError, match=r"Content-Length|too big"):
            parse(data)


def test_dns_query_bytes_are_base64_as_go_encodes_them(fake: FakeLocalAPI) -> None:
    # Go's encoding/json writes []byte as standard base64 with padding.
    status, body = run(LocalAPI(fake.socket_path).get("dns-query?name=example.com&type=A"))
    raw = base64.b64decode(json.loads(body)["Bytes"], validate=True)
    assert status == 200 and dnslib.DNSRecord.parse(raw).rr[0].rdata == dnslib.A("192.0.2.1")
