"""The HTTP handshake's one origin-form request, GET /proxy.pac: its event, however fed, and
the forms it refuses."""

from __future__ import annotations

import pytest
from proto_harness import Outcome, closed_at_every_prefix, refused, run, tr
from test_http_connect import BAD_REQUEST, BAD_VERSION, NOT_CONNECT, TAIL, Users, basic

from tsproxy.proto import HttpConnectHandshake, LocalRequest, local_reply
from tsproxy.proto.http_response import PAC_TYPE

pytestmark = pytest.mark.unit

NOT_FOUND = b"HTTP/1.1 404 Not Found\r\n" + TAIL
GET_OR_HEAD = b"HTTP/1.1 405 Method Not Allowed\r\nAllow: GET, HEAD\r\n" + TAIL


def pac_head(*lines: str, method: str = "GET", target: str = "/proxy.pac",
             version: str = "HTTP/1.1") -> bytes:
    return "".join(f"{line}\r\n"
                   for line in (f"{method} {target} {version}", *lines, "")).encode()


def no_auth() -> HttpConnectHandshake:
    return HttpConnectHandshake()


USERS = Users()


def with_auth() -> HttpConnectHandshake:
    return HttpConnectHandshake(USERS)


@pytest.mark.parametrize(("data", "method"), [
    (pac_head("Host: 100.121.76.21:11080", "User-Agent: Mozilla/5.0", "Accept: */*"), "GET"),
    (pac_head(method="HEAD"), "HEAD"),
    (pac_head(version="HTTP/1.0"), "GET"),
    (pac_head(target="/proxy.pac?t=1732550400"), "GET"),  # cache busters
    (b"GET /proxy.pac HTTP/1.1\nHost: x\n\n", "GET"),
    # Credentials are neither needed nor judged: a wrong or repeated one is no reason to refuse.
    (pac_head(basic("alice:wrong")), "GET"),
    (pac_head(basic("x:y"), basic("x:z")), "GET"),
])
def test_pac_request(data: bytes, method: str) -> None:
    for make in (no_auth, with_auth):
        tr(make, data, Outcome(b"", local=LocalRequest(method, "/proxy.pac")))
    assert USERS.calls == []  # the login callback was never asked


def test_the_event_waits_for_the_end_of_the_head() -> None:
    tr(no_auth, pac_head()[:-2], Outcome(b""))
    tr(no_auth, b"GET /proxy.pac HTTP/1.1", Outcome(b""))
    hs = HttpConnectHandshake()
    hs.receive_data(b"GET /proxy.pac HTTP/1.1\r\nHost: x\r\n")
    assert (hs.local, hs.request) == (None, None)
    hs.receive_data(b"\r\n")
    assert (hs.local, hs.request) == (LocalRequest("GET", "/proxy.pac"), None)


@pytest.mark.parametrize(("data", "sent", "reason"), [
    (pac_head(method="POST"), GET_OR_HEAD, "method 'POST' not supported for /proxy.pac"),
    (pac_head(method="get"), GET_OR_HEAD, "method 'get'"),  # methods are case-sensitive
    (pac_head(method="DELETE"), GET_OR_HEAD, "method 'DELETE'"),
    (pac_head(target="/index.html"), NOT_FOUND, "no resource '/index.html' here"),
    (pac_head(target="/proxy.pac/"), NOT_FOUND, "no resource"),
    (pac_head(target="/proxy.pacx"), NOT_FOUND, "no resource"),
    (pac_head(target="/PROXY.PAC"), NOT_FOUND, "no resource"),  # paths are case-sensitive
    (pac_head(target="//proxy.pac"), NOT_FOUND, "no resource"),
    (pac_head(target="/wpad.dat"), NOT_FOUND, "no resource"),
    (pac_head(version="HTTP/2.0"), BAD_VERSION, "version 'HTTP/2.0'"),
    (b"GET /proxy.pac\r\n\r\n", BAD_REQUEST, "bad request line"),
    (b"GET  /proxy.pac HTTP/1.1\r\n\r\n", BAD_REQUEST, "bad request line"),
    (pac_head("Host: a", " folded"), BAD_REQUEST, "obsolete header line folding"),
    (pac_head("Host gpu1"), BAD_REQUEST, "header line without ':'"),
    (pac_head("X-A: a\x00b"), BAD_REQUEST, "CR or NUL in header 'X-A'"),
    # Not origin-form: the CONNECT rules still apply.
    (pac_head(target="proxy.pac"), NOT_CONNECT, "method 'GET' not supported"),
    (pac_head(target="*", method="OPTIONS"), NOT_CONNECT, "method 'OPTIONS'"),
])
def test_refused(data: bytes, sent: bytes, reason: str) -> None:
    refused(no_auth, data, sent, reason)
    refused(with_auth, data, sent, reason)


def test_refused_at_the_request_line() -> None:
    # A wrong path is answered as soon as the request line ends, not at the end of the head.
    outcome = run(no_auth, [b"GET /nope HTTP/1.1\r\n"])
    assert outcome.sent == NOT_FOUND


def test_eof_mid_head_closes_silently() -> None:
    closed_at_every_prefix(no_auth, pac_head("Host: x"))
    closed_at_every_prefix(with_auth, pac_head("Host: x"))


def test_reply() -> None:
    text = 'function FindProxyForURL(url, host) { return "DIRECT"; } // é\n'
    body = text.encode()
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ns-proxy-autoconfig\r\n"
            b"Content-Length: %d\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n"
            % len(body))
    assert len(body) == len(text) + 1  # the length counts bytes, not characters
    assert local_reply(LocalRequest("GET", "/proxy.pac"), PAC_TYPE, text) == head + body
    assert local_reply(LocalRequest("HEAD", "/proxy.pac"), PAC_TYPE, text) == head
