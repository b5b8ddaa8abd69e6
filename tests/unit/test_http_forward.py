"""Absolute-form requests (`GET http://host/ HTTP/1.1`): the target, the head rewritten for the
server, however fed, and the forms refused."""

from __future__ import annotations

import pytest
from proto_harness import Outcome, closed_at_every_prefix, refused, tr
from test_http_connect import BAD_REQUEST, NEEDS_AUTH, NOT_CONNECT, TAIL, Users, basic

from tsproxy.proto import ConnectRequest, HttpConnectHandshake, Reply
from tsproxy.proto.http_forward import origin_form, rewrite

pytestmark = pytest.mark.unit


def request(*lines: str, method: str = "GET", url: str = "http://web.fgpu:3000/x?y=1",
            version: str = "HTTP/1.1") -> bytes:
    return "".join(f"{line}\r\n" for line in (f"{method} {url} {version}", *lines, "")).encode()


def no_auth() -> HttpConnectHandshake:
    return HttpConnectHandshake()


def with_auth() -> HttpConnectHandshake:
    return HttpConnectHandshake(Users())


def to(host: str, port: int, user: str | None = None) -> ConnectRequest:
    return ConnectRequest(host, port, "http", user)


CASES = [
    # curl -x http://PROXY http://web.fgpu:3000/x?y=1
    (request("Host: web.fgpu:3000", "User-Agent: curl/7.88.1", "Accept: */*",
             "Proxy-Connection: Keep-Alive"),
     to("web.fgpu", 3000),
     b"GET /x?y=1 HTTP/1.1\r\nHost: web.fgpu:3000\r\nUser-Agent: curl/7.88.1\r\n"
     b"Accept: */*\r\nConnection: close\r\n\r\n"),
    # No port: 80; no path: "/"; a query without a path; a fragment is never sent on.
    (request(url="http://web.fgpu"), to("web.fgpu", 80),
     b"GET / HTTP/1.1\r\nHost: web.fgpu\r\nConnection: close\r\n\r\n"),
    (request(url="http://web.fgpu?q=1"), to("web.fgpu", 80),
     b"GET /?q=1 HTTP/1.1\r\nHost: web.fgpu\r\nConnection: close\r\n\r\n"),
    (request(url="http://web.fgpu/a#frag"), to("web.fgpu", 80),
     b"GET /a HTTP/1.1\r\nHost: web.fgpu\r\nConnection: close\r\n\r\n"),
    # The scheme in any case; the host as written (names are resolved case-insensitively).
    (request(url="HTTP://Web.FGPU./"), to("Web.FGPU.", 80),
     b"GET / HTTP/1.1\r\nHost: Web.FGPU.\r\nConnection: close\r\n\r\n"),
    (request(url="http://[fd7a:115c:a1e0::2]:8080/"), to("fd7a:115c:a1e0::2", 8080),
     b"GET / HTTP/1.1\r\nHost: [fd7a:115c:a1e0::2]:8080\r\nConnection: close\r\n\r\n"),
    (request(url="http://[fd7a:115c:a1e0::2]/"), to("fd7a:115c:a1e0::2", 80),
     b"GET / HTTP/1.1\r\nHost: [fd7a:115c:a1e0::2]\r\nConnection: close\r\n\r\n"),
    (request(url="http://100.64.0.7.fgpu/"), to("100.64.0.7.fgpu", 80),
     b"GET / HTTP/1.1\r\nHost: 100.64.0.7.fgpu\r\nConnection: close\r\n\r\n"),
    # Host is the URL's, whatever the client said; hop-by-hop headers stay here, with every
    # header Connection names; end-to-end ones (Transfer-Encoding too) go on, in order.
    (request("Host: elsewhere.example", "Connection: keep-alive, X-Hop", "X-Hop: 1",
             "Keep-Alive: timeout=5", "X-End: 2", "transfer-encoding: chunked",
             method="POST", url="http://web.fgpu/upload"),
     to("web.fgpu", 80),
     b"POST /upload HTTP/1.1\r\nHost: web.fgpu\r\nX-End: 2\r\ntransfer-encoding: chunked\r\n"
     b"Connection: close\r\n\r\n"),
    (request("Accept: */*", version="HTTP/1.0", method="HEAD"), to("web.fgpu", 3000),
     b"HEAD /x?y=1 HTTP/1.0\r\nHost: web.fgpu:3000\r\nAccept: */*\r\nConnection: close\r\n\r\n"),
    # One plain Content-Length, or a Transfer-Encoding ending in chunked: the body goes on.
    (request("Content-Length:  12 ", method="PUT"), to("web.fgpu", 3000),
     b"PUT /x?y=1 HTTP/1.1\r\nHost: web.fgpu:3000\r\nContent-Length:  12 \r\n"
     b"Connection: close\r\n\r\n"),
    (request("Transfer-Encoding: gzip, Chunked", "X-A: 1", method="POST"), to("web.fgpu", 3000),
     b"POST /x?y=1 HTTP/1.1\r\nHost: web.fgpu:3000\r\nTransfer-Encoding: gzip, Chunked\r\n"
     b"X-A: 1\r\nConnection: close\r\n\r\n"),
    (request("Transfer-Encoding: gzip", "Transfer-Encoding: chunked", method="POST"),
     to("web.fgpu", 3000),
     b"POST /x?y=1 HTTP/1.1\r\nHost: web.fgpu:3000\r\nTransfer-Encoding: gzip\r\n"
     b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"),
    # Credentials are for the proxy: never sent on (here no login is configured).
    (request(basic("alice:secret")), to("web.fgpu", 3000),
     b"GET /x?y=1 HTTP/1.1\r\nHost: web.fgpu:3000\r\nConnection: close\r\n\r\n"),
]


@pytest.mark.parametrize(("data", "target", "head"), CASES)
def test_forwarded(data: bytes, target: ConnectRequest, head: bytes) -> None:
    tr(no_auth, data, Outcome(b"", target, head))


def test_the_body_follows_the_rewritten_head() -> None:
    hs = HttpConnectHandshake()
    hs.receive_data(request("Content-Length: 5", method="POST") + b"hel")
    hs.receive_data(b"lo")
    assert hs.forwarding
    assert hs.leftover == (b"POST /x?y=1 HTTP/1.1\r\nHost: web.fgpu:3000\r\n"
                           b"Content-Length: 5\r\nConnection: close\r\n\r\nhello")


def test_the_login_is_asked_and_not_sent_on() -> None:
    tr(with_auth, request(basic("alice:secret"), "Accept: */*"), Outcome(
        b"", to("web.fgpu", 3000, "alice"),
        b"GET /x?y=1 HTTP/1.1\r\nHost: web.fgpu:3000\r\nAccept: */*\r\nConnection: close\r\n\r\n"))
    refused(with_auth, request("Accept: */*"), NEEDS_AUTH, "no Proxy-Authorization")
    refused(with_auth, request(basic("alice:wrong")), NEEDS_AUTH, "authentication failed")


def test_reply() -> None:
    hs = HttpConnectHandshake()
    hs.receive_data(request())
    assert hs.reply(Reply.SUCCEEDED) == b""  # the server's response is the answer
    assert hs.reply(Reply.HOST_UNREACHABLE) == b"HTTP/1.1 502 Bad Gateway\r\n" + TAIL
    assert hs.reply(Reply.NOT_ALLOWED) == b"HTTP/1.1 403 Forbidden\r\n" + TAIL
    connect = HttpConnectHandshake()
    connect.receive_data(b"CONNECT web.fgpu:443 HTTP/1.1\r\n\r\n")
    assert not connect.forwarding
    assert connect.reply(Reply.SUCCEEDED) == b"HTTP/1.1 200 Connection established\r\n\r\n"


@pytest.mark.parametrize(("data", "sent", "reason"), [
    (request(url="http://alice@web.fgpu/"), BAD_REQUEST, "userinfo in the URL"),
    (request(url="http://alice:pw@web.fgpu:80/"), BAD_REQUEST, "userinfo in the URL"),
    (request(url="http:///x"), BAD_REQUEST, "bad host"),
    (request(url="http://"), BAD_REQUEST, "bad host"),
    (request(url="http://web.fgpu:0/"), BAD_REQUEST, "port out of range"),
    (request(url="http://web.fgpu:65536/"), BAD_REQUEST, "port out of range"),
    (request(url="http://web.fgpu:/"), BAD_REQUEST, "is not host:port"),
    (request(url="http://web.fgpu:http/"), BAD_REQUEST, "is not host:port"),
    (request(url="http://[web.fgpu]/"), BAD_REQUEST, "bad IPv6 literal"),
    (request(url="http://fd7a::1/"), BAD_REQUEST, "bad host"),  # unbracketed
    (request(url="http://web%2efgpu/"), BAD_REQUEST, "bad host"),
    (request(url="http://" + "a" * 64 + ".fgpu/"), BAD_REQUEST, "bad host"),
    (request(url="https://web.fgpu/"), NOT_CONNECT, "method 'GET' not supported"),
    (request(url="ftp://web.fgpu/"), NOT_CONNECT, "method 'GET' not supported"),
    (request(url="http:/web.fgpu/"), NOT_CONNECT, "method 'GET' not supported"),
    (request("Host: a", " folded"), BAD_REQUEST, "obsolete header line folding"),
    (request("Host: a", "\tfolded"), BAD_REQUEST, "obsolete header line folding"),
    # RFC 9112 6: framing that the server could read otherwise than we would (smuggling).
    (b"GET http://web.fgpu/ HTTP/1.1\nX-A: b\n\n", BAD_REQUEST, "bare LF line ending"),
    (b"GET http://web.fgpu/ HTTP/1.1\r\nX-A: b\n\r\n", BAD_REQUEST, "bare LF line ending"),
    (b"GET http://web.fgpu/ HTTP/1.1\r\nX-A: b\r\n\n", BAD_REQUEST, "bare LF line ending"),
    (request("Content-Length: 5", "Transfer-Encoding: chunked", method="POST"), BAD_REQUEST,
     "both Content-Length and Transfer-Encoding"),
    (request("Transfer-Encoding: chunked", "Content-Length: 5", method="POST"), BAD_REQUEST,
     "both Content-Length and Transfer-Encoding"),
    (request("Content-Length: 5", "Content-Length: 6", method="POST"), BAD_REQUEST,
     "Content-Length given more than once"),
    (request("Content-Length: 5", "Content-Length: 5", method="POST"), BAD_REQUEST,
     "Content-Length given more than once"),
    (request("Content-Length: 5, 6", method="POST"), BAD_REQUEST,
     "Content-Length given more than once"),
    (request("Content-Length: +5", method="POST"), BAD_REQUEST, "is not a decimal number"),
    (request("Content-Length: 0x5", method="POST"), BAD_REQUEST, "is not a decimal number"),
    (request("Content-Length: 5 5", method="POST"), BAD_REQUEST, "is not a decimal number"),
    (request("Content-Length: \u0665", method="POST"), BAD_REQUEST, "is not a decimal number"),
    (request("Content-Length:", method="POST"), BAD_REQUEST, "is not a decimal number"),
    (request("Transfer-Encoding: gzip", method="POST"), BAD_REQUEST, "does not end in chunked"),
    (request("Transfer-Encoding: chunked, gzip", method="POST"), BAD_REQUEST,
     "does not end in chunked"),
    (request("Transfer-Encoding: chunked", "Transfer-Encoding: chunked", method="POST"),
     BAD_REQUEST, "does not end in chunked"),
    (request("Transfer-Encoding: chunked,", method="POST"), BAD_REQUEST,
     "does not end in chunked"),
    (request("Transfer-Encoding: \"chunked\"", method="POST"), BAD_REQUEST,
     "does not end in chunked"),
    (request("Transfer-Encoding: chunked", method="POST", version="HTTP/1.0"), BAD_REQUEST,
     "Transfer-Encoding in an HTTP/1.0 request"),
    (request("Connection: Content-Length", "Content-Length: 5", method="POST"), BAD_REQUEST,
     "Connection names Content-Length or Transfer-Encoding"),
    (request("Connection: close, transfer-encoding", "Transfer-Encoding: chunked",
             method="POST"), BAD_REQUEST, "Connection names Content-Length or Transfer-Encoding"),
    (request("Content-Length : 5", method="POST"), BAD_REQUEST, "bad header name"),
])
def test_refused(data: bytes, sent: bytes, reason: str) -> None:
    refused(no_auth, data, sent, reason)


def test_eof_mid_head_closes_silently() -> None:
    closed_at_every_prefix(no_auth, request("Host: web.fgpu"))


@pytest.mark.parametrize(("rest", "expected"), [
    ("web", ("web", "/")), ("web/", ("web", "/")), ("web:80/a/b?c#d", ("web:80", "/a/b?c")),
    ("web?x/y", ("web", "/?x/y")), ("web#f", ("web", "/")), ("[::1]:8/p", ("[::1]:8", "/p")),
])
def test_origin_form(rest: str, expected: tuple[str, str]) -> None:
    assert origin_form(rest) == expected


def test_rewrite_keeps_the_clients_bytes() -> None:
    headers = [("X-Latin", "X-Latin: caf\xe9"), ("CONNECTION", "CONNECTION: X-Gone"),
               ("x-gone", "x-gone: 1")]
    assert rewrite("GET", "/", "HTTP/1.1", "h", headers) == (
        b"GET / HTTP/1.1\r\nHost: h\r\nX-Latin: caf\xe9\r\nConnection: close\r\n\r\n")
