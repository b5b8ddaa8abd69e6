"""HTTP CONNECT handshake: every good and bad input the proxy takes -> exact bytes, however fed."""

from __future__ import annotations

import base64
from http import HTTPStatus

import pytest
from proto_harness import Make, Outcome, closed_at_every_prefix, refused, run, tr

from tsproxy.proto import ConnectRequest, Failure, HttpConnectHandshake, ProtocolError, Reply
from tsproxy.proto.http_head import MAX_HEAD

pytestmark = pytest.mark.unit

TAIL = b"Content-Length: 0\r\nConnection: close\r\n\r\n"
BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\n" + TAIL
NEEDS_AUTH = (b"HTTP/1.1 407 Proxy Authentication Required\r\n"
              b'Proxy-Authenticate: Basic realm="tsproxy"\r\n' + TAIL)
NOT_CONNECT = b"HTTP/1.1 405 Method Not Allowed\r\nAllow: CONNECT\r\n" + TAIL
TOO_LARGE = b"HTTP/1.1 431 Request Header Fields Too Large\r\n" + TAIL
BAD_VERSION = b"HTTP/1.1 505 HTTP Version Not Supported\r\n" + TAIL


def basic(credentials: str) -> str:
    return "Proxy-Authorization: Basic " + base64.b64encode(credentials.encode()).decode()


def head(*lines: str, target: str = "gpu1.fgpu:443", version: str = "HTTP/1.1") -> bytes:
    return "".join(f"{line}\r\n" for line in (f"CONNECT {target} {version}", *lines, "")).encode()


class Users:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def __call__(self, user: str, password: str) -> bool:
        self.calls.append((user, password))
        return (user, password) in {("alice", "secret"), ("jürgen", "pä:ss")}


def no_auth() -> HttpConnectHandshake:
    return HttpConnectHandshake()


def with_auth() -> HttpConnectHandshake:
    return HttpConnectHandshake(Users())


def connect(host: str, port: int, user: str | None = None) -> ConnectRequest:
    return ConnectRequest(host, port, "http", user)


@pytest.mark.parametrize(("data", "expected"), [
    (head("Host: gpu1.fgpu:443", "User-Agent: curl/7.88.1"), connect("gpu1.fgpu", 443)),
    (head(version="HTTP/1.0"), connect("gpu1.fgpu", 443)),
    (b"CONNECT gpu1.fgpu:22 HTTP/1.0\n\n", connect("gpu1.fgpu", 22)),  # bare LF, as nc -X may
    (b"CONNECT gpu1.fgpu:22 HTTP/1.1\r\nHost: x\n\r\n", connect("gpu1.fgpu", 22)),
    (head(target="100.64.0.7:80"), connect("100.64.0.7", 80)),
    (head(target="100.64.0.7.fgpu:80"), connect("100.64.0.7.fgpu", 80)),
    (head(target="[fd7a:115c:a1e0::1]:22"), connect("fd7a:115c:a1e0::1", 22)),
    (head(target="[::ffff:100.64.0.7]:22"), connect("::ffff:100.64.0.7", 22)),
    (head(target="Gpu1.FGPU.:65535"), connect("Gpu1.FGPU.", 65535)),
    (head(target="gpu1.fgpu:00443"), connect("gpu1.fgpu", 443)),
    (head("X-Empty:", "X-Spaces:   a  b  ", "x-tab:\tv\t"), connect("gpu1.fgpu", 443)),
    (head("X-Utf8: café ☕"), connect("gpu1.fgpu", 443)),  # obs-text is fine in values
    (head(basic("alice:secret")), connect("gpu1.fgpu", 443)),  # ignored: no auth configured
    (head(basic("x:y"), basic("x:z")), connect("gpu1.fgpu", 443)),
    (head("Content-Length: 0"), connect("gpu1.fgpu", 443)),  # no body, said aloud
])
def test_connect_without_auth(data: bytes, expected: ConnectRequest) -> None:
    tr(no_auth, data, Outcome(b"", expected))


@pytest.mark.parametrize(("line", "user"), [
    (basic("alice:secret"), "alice"),
    ("proxy-authorization: basic YWxpY2U6c2VjcmV0", "alice"),
    ("PROXY-AUTHORIZATION:BASIC   YWxpY2U6c2VjcmV0  ", "alice"),
    (basic("jürgen:pä:ss"), "jürgen"),  # the password may hold ':'
])
def test_connect_with_auth(line: str, user: str) -> None:
    tr(with_auth, head("Host: gpu1.fgpu:443", line), Outcome(b"", connect("gpu1.fgpu", 443, user)))


def test_payload_after_the_head_is_leftover() -> None:
    hs = HttpConnectHandshake()
    hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"
    assert hs.receive_data(head() + hello) == b""
    assert hs.request == connect("gpu1.fgpu", 443)
    assert hs.leftover == hello
    assert hs.receive_data(b"more") == b""
    assert hs.receive_data(b"") == b""
    assert hs.leftover == hello + b"more"


def test_the_callback_is_asked_once() -> None:
    users = Users()
    hs = HttpConnectHandshake(users)
    for byte in head(basic("alice:secret")):
        hs.receive_data(bytes([byte]))
    assert users.calls == [("alice", "secret")]
    assert hs.request == connect("gpu1.fgpu", 443, "alice")


REFUSALS = [
    # Bad request lines: 400 as soon as the line ends, before any header.
    (no_auth, b"CONNECT gpu1.fgpu:443\r\n", BAD_REQUEST, "bad request line"),
    (no_auth, b"CONNECT  gpu1.fgpu:443 HTTP/1.1\r\n", BAD_REQUEST, "bad request line"),
    (no_auth, b"CONNECT gpu1.fgpu:443 HTTP/1.1 x\r\n", BAD_REQUEST, "bad request line"),
    (no_auth, b"CONNECT gpu1.fgpu:443 HTTP/1.1x\r\n", BAD_REQUEST, "bad request line"),
    (no_auth, b"CONNECT gpu1.fgpu:443 http/1.1\r\n", BAD_REQUEST, "bad request line"),
    (no_auth, b"CON\x00NECT gpu1.fgpu:443 HTTP/1.1\r\n", BAD_REQUEST, "bad request line"),
    (no_auth, b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n", BAD_REQUEST, "bad request line"),
    (no_auth, b"\r\n", BAD_REQUEST, "bad request line ''"),
    (no_auth, b"CONNECT gpu1.fgpu:443 HTTP/2.0\r\n", BAD_VERSION, "version 'HTTP/2.0'"),
    # Other methods: 405 unless absolute-form http:// (test_http_forward.py); case-sensitive.
    (no_auth, b"GET https://gpu1.fgpu/ HTTP/1.1\r\n", NOT_CONNECT, "method 'GET' not supported"),
    (no_auth, b"connect gpu1.fgpu:443 HTTP/1.1\r\n", NOT_CONNECT, "method 'connect'"),
    # Bad host:port.
    (no_auth, head(target="gpu1.fgpu"), BAD_REQUEST, "is not host:port"),
    (no_auth, head(target="gpu1.fgpu:"), BAD_REQUEST, "is not host:port"),
    (no_auth, head(target="gpu1.fgpu:+443"), BAD_REQUEST, "is not host:port"),
    (no_auth, head(target="gpu1.fgpu:123456"), BAD_REQUEST, "is not host:port"),
    (no_auth, head(target="gpu1.fgpu:\xb2"), BAD_REQUEST, "is not host:port"),  # latin-1 '²'
    (no_auth, head(target="gpu1.fgpu:0"), BAD_REQUEST, "port out of range"),
    (no_auth, head(target="gpu1.fgpu:65536"), BAD_REQUEST, "port out of range"),
    (no_auth, head(target=":443"), BAD_REQUEST, "bad host"),
    (no_auth, head(target="fd7a:115c:a1e0::1:22"), BAD_REQUEST, "bad host"),
    (no_auth, head(target="alice@gpu1.fgpu:443"), BAD_REQUEST, "bad host"),
    (no_auth, head(target="http://gpu1.fgpu:443"), BAD_REQUEST, "bad host"),
    (no_auth, head(target="gpu1%2efgpu:443"), BAD_REQUEST, "bad host"),
    (no_auth, head(target="a" * 64 + ".fgpu:443"), BAD_REQUEST, "bad host"),
    (no_auth, head(target="[gpu1.fgpu]:443"), BAD_REQUEST, "bad IPv6 literal"),
    (no_auth, head(target="[100.64.0.7]:443"), BAD_REQUEST, "bad IPv6 literal"),
    (no_auth, head(target="[fe80::1%25eth0]:443"), BAD_REQUEST, "bad IPv6 literal"),
    # Bad header lines.
    (no_auth, head("Host gpu1.fgpu"), BAD_REQUEST, "header line without ':'"),
    (no_auth, head("Host : gpu1.fgpu"), BAD_REQUEST, "bad header name 'Host '"),
    (no_auth, head(": x"), BAD_REQUEST, "bad header name ''"),
    (no_auth, head("Host: a", " folded"), BAD_REQUEST, "obsolete header line folding"),
    (no_auth, head("X-A: a\rb"), BAD_REQUEST, "CR or NUL in header 'X-A'"),
    (no_auth, head("X-A: a\x00b"), BAD_REQUEST, "CR or NUL in header 'X-A'"),
    # A CONNECT has no body (RFC 9110 9.3.6): one declared is 400, not tunnel payload.
    (no_auth, head("Content-Length: 5"), BAD_REQUEST, "CONNECT with a body"),
    (no_auth, head("Transfer-Encoding: chunked"), BAD_REQUEST, "CONNECT with a body"),
    (no_auth, head("Content-Length: 0", "Content-Length: 0"), BAD_REQUEST,
     "Content-Length given more than once"),
    (no_auth, head("Content-Length: -0"), BAD_REQUEST, "is not a decimal number"),
    (with_auth, head("Content-Length: 1", basic("alice:secret")), BAD_REQUEST,
     "CONNECT with a body"),
    # Authentication.
    (with_auth, head(), NEEDS_AUTH, "no Proxy-Authorization"),
    (with_auth, head(basic("alice:wrong")), NEEDS_AUTH, "authentication failed for user 'alice'"),
    (with_auth, head(basic("eve:secret")), NEEDS_AUTH, "authentication failed for user 'eve'"),
    (with_auth, head("Proxy-Authorization: Bearer abc"), NEEDS_AUTH, "scheme 'Bearer' is not Basic"),
    (with_auth, head("Proxy-Authorization: Basic"), NEEDS_AUTH, "without a user name"),
    (with_auth, head("Proxy-Authorization: Basic !!!!"), NEEDS_AUTH, "not base64"),
    (with_auth, head("Proxy-Authorization: Basic YWxpY2U6c2VjcmV"), NEEDS_AUTH, "not base64"),
    (with_auth, head("Proxy-Authorization: Basic /w=="), NEEDS_AUTH, "not base64 of UTF-8"),
    (with_auth, head(basic("alice")), NEEDS_AUTH, "without a user name and ':'"),
    (with_auth, head(basic(":secret")), NEEDS_AUTH, "without a user name and ':'"),
    (with_auth, head(basic("alice:secret"), basic("alice:secret")), BAD_REQUEST,
     "repeated Proxy-Authorization"),
    # Syntax comes before authentication: nothing to log in to.
    (with_auth, head(target="gpu1.fgpu"), BAD_REQUEST, "is not host:port"),
]


@pytest.mark.parametrize(("make", "data", "sent", "reason"), REFUSALS,
                         ids=[f"{i:02}-{case[3]}" for i, case in enumerate(REFUSALS)])
def test_refused(make: Make, data: bytes, sent: bytes, reason: str) -> None:
    refused(make, data, sent, reason)


def test_callback_is_not_asked_for_undecodable_credentials() -> None:
    users = Users()
    for line in ["Proxy-Authorization: Basic !!!!", basic(":x"), basic("alice:wrong")]:
        with pytest.raises(ProtocolError):
            HttpConnectHandshake(users).receive_data(head(line))
    assert users.calls == [("alice", "wrong")]


def test_no_password_in_any_reason() -> None:
    for line in [basic("alice:hunter2"), "Proxy-Authorization hunter2",
                 "Proxy-Authorization: Basic hunter2\x00"]:
        with pytest.raises(ProtocolError) as caught:
            HttpConnectHandshake(Users()).receive_data(head(line))
        assert "hunter2" not in caught.value.reason
        assert "aHVudGVyMg" not in caught.value.reason


def test_head_of_exactly_64_kib_is_accepted() -> None:
    start = head()[:-2]  # without the empty line
    filler = MAX_HEAD - len(start) - len(b"X: \r\n\r\n")
    data = start + b"X: " + b"a" * filler + b"\r\n\r\n"
    assert len(data) == MAX_HEAD
    tr(no_auth, data, Outcome(b"", connect("gpu1.fgpu", 443)))
    # One more byte anywhere in the head is one too many.
    refused(no_auth, start + b"X: " + b"a" * (filler + 1) + b"\r\n\r\n", TOO_LARGE, "over 65536")


@pytest.mark.parametrize("data", [
    head()[:-2] + b"X: " + b"a" * MAX_HEAD,  # a header that never ends
    head()[:-2] + b"X: a\r\n" * (MAX_HEAD // 6),  # headers that never end
    b"CONNECT " + b"a" * MAX_HEAD,  # a request line that never ends
], ids=["long-header", "many-headers", "long-request-line"])
def test_endless_head_is_431(data: bytes) -> None:
    refused(no_auth, data, TOO_LARGE, "request head over 65536 bytes")


@pytest.mark.parametrize(("make", "data"), [
    (no_auth, head("Host: gpu1.fgpu:443")),
    (with_auth, head(basic("alice:secret"))),
])
def test_eof_mid_head_closes_silently(make: Make, data: bytes) -> None:
    closed_at_every_prefix(make, data)


def test_incomplete_head_waits() -> None:
    tr(no_auth, head()[:-2], Outcome(b""))
    tr(no_auth, b"CONNECT gpu1.fgpu:443 HTTP/1.1", Outcome(b""))


def test_a_failed_handshake_stays_failed() -> None:
    hs = HttpConnectHandshake()
    with pytest.raises(ProtocolError):
        hs.receive_data(b"GET /nope HTTP/1.1\r\n")
    with pytest.raises(ProtocolError, match="already failed") as caught:
        hs.receive_data(head())
    assert caught.value.reply == b""
    assert (hs.request, hs.leftover, hs.buffered) == (None, b"", 0)


@pytest.mark.parametrize(("code", "expected"), [
    (Reply.SUCCEEDED, b"HTTP/1.1 200 Connection established\r\n\r\n"),
    (Reply.GENERAL_FAILURE, b"HTTP/1.1 502 Bad Gateway\r\n" + TAIL),
    (Reply.NOT_ALLOWED, b"HTTP/1.1 403 Forbidden\r\n" + TAIL),
    (Reply.NETWORK_UNREACHABLE, b"HTTP/1.1 502 Bad Gateway\r\n" + TAIL),
    (Reply.HOST_UNREACHABLE, b"HTTP/1.1 502 Bad Gateway\r\n" + TAIL),
    (Reply.CONNECTION_REFUSED, b"HTTP/1.1 502 Bad Gateway\r\n" + TAIL),
    (Reply.TTL_EXPIRED, b"HTTP/1.1 504 Gateway Timeout\r\n" + TAIL),
    (Reply.COMMAND_NOT_SUPPORTED, b"HTTP/1.1 405 Method Not Allowed\r\n" + TAIL),
    (Reply.ADDRESS_TYPE_NOT_SUPPORTED, b"HTTP/1.1 400 Bad Request\r\n" + TAIL),
])
def test_reply(code: Reply, expected: bytes) -> None:
    hs = HttpConnectHandshake()
    hs.receive_data(head())
    assert hs.reply(code) == expected
    assert hs.reply(code, ("100.64.0.1", 40000)) == expected


@pytest.mark.parametrize(("make", "data", "kind"), [
    (with_auth, head(), Failure.LOGIN),
    (with_auth, head(basic("alice:wrong")), Failure.LOGIN),
    (with_auth, head("Proxy-Authorization: Bearer x"), Failure.LOGIN),
    (with_auth, head(basic("alice:secret"), basic("alice:secret")), Failure.BAD_HANDSHAKE),
    (no_auth, b"GET /nope HTTP/1.1\r\n\r\n", Failure.BAD_HANDSHAKE),
    (no_auth, head(version="HTTP/2.0"), Failure.BAD_HANDSHAKE),
])
def test_failure_kind(make: Make, data: bytes, kind: Failure) -> None:
    """What failed is told by a type, never by the reply's bytes, however the bytes come."""
    outcome = run(make, [data])
    assert outcome.kind is kind
    tr(make, data, outcome)


@pytest.mark.parametrize(("code", "status", "expected", "answer"), [
    (Reply.NOT_ALLOWED, None, b"HTTP/1.1 403 Forbidden\r\n" + TAIL, "HTTP 403"),
    (Reply.TTL_EXPIRED, None, b"HTTP/1.1 504 Gateway Timeout\r\n" + TAIL, "HTTP 504"),
    # A status more precise than the REP code wins: the caps' 503.
    (Reply.GENERAL_FAILURE, HTTPStatus.SERVICE_UNAVAILABLE,
     b"HTTP/1.1 503 Service Unavailable\r\n" + TAIL, "HTTP 503"),
])
def test_refusal(code: Reply, status: HTTPStatus | None, expected: bytes, answer: str) -> None:
    hs = HttpConnectHandshake()
    hs.receive_data(head())
    assert hs.refusal(code, status) == (expected, answer)


def test_run_reports_pending() -> None:
    assert run(no_auth, [b"CONNECT"]) == Outcome(b"")
