"""What an HTTP request head asks the proxy for, and the login, sans-I/O: a tunnel (CONNECT,
RFC 9110 9.3.6), one absolute-form request to forward (http_forward) or the PAC file; the
credentials are RFC 7617 Basic. http_head reads the head's lines; the request line is judged as
soon as it ends, the credentials once the empty line ends the head.

Decisions (each has a test):

- CONNECT target: authority-form only. `host:port` or `[IPv6]:port`; the port is 1..5 ASCII digits
  with a value of 1..65535 (port 0 is 400: in HTTP it is a malformed authority, not a policy
  refusal). The host must pass base.is_host; zone ids, userinfo, unbracketed IPv6: 400.
- Any other method with an absolute-form `http://` target (scheme in any case) is a request
  to forward: .request names the URL's host and port (80 by default), with the same host
  rules as CONNECT and the same login; .leftover starts with the head rewritten for the
  server (http_forward.rewrite) and reply(SUCCEEDED) is empty: the server's own response is
  the answer. Userinfo in the URL: 400. A bare LF line ending: 400, because another parser
  reads the head next. Any other target with a method other than CONNECT (https:// URLs,
  `*`): 405 with `Allow: CONNECT`.
- Origin-form resources of the proxy's own: `GET /proxy.pac`, `GET /metrics` and the status
  page `GET /` (or HEAD, a query string allowed) are local requests (the event is a
  LocalRequest): no target, and no credentials asked for, because browsers fetch their PAC
  file and pages, and Prometheus scrapes, without proxy credentials. Another method on them:
  405 with `Allow: GET, HEAD`; any other origin-form path: 404.
- Only Proxy-Authorization is used, and only with authentication on; then a repeated one is
  400 (which one would count?).
- Authentication on: a missing, non-Basic, undecodable (bad base64, not UTF-8, no ':') or
  empty-user credential is 407 without asking the callback; a decodable one is passed to the
  callback, which decides. Every 407 carries `Proxy-Authenticate: Basic realm="tsproxy"`.
- Body framing (RFC 9112 6, http_forward.framing_problem): Content-Length given twice or not
  a plain decimal, Content-Length beside Transfer-Encoding, a Transfer-Encoding not ending
  in chunked (or in HTTP/1.0), Connection naming either of them, and a CONNECT with a body
  (RFC 9110 9.3.6 gives it none): 400.
- Bytes after the head are tunnel payload (.leftover); a forwarded request's body goes on
  as it came.
"""

from __future__ import annotations

import base64
import binascii
from http import HTTPStatus

from tsproxy_generator.addresses import ip_literal

from . import http_forward
from .base import (
    Authenticate,
    ConnectRequest,
    Event,
    Handshake,
    LocalRequest,
    Reply,
    is_host,
    shown,
)
from .http_head import DIGITS, HeadReader, RequestLine, header, request_line
from .http_response import ESTABLISHED, STATUS, bad, refused, response, unauthorized

PAC_PATH = "/proxy.pac"
METRICS_PATH = "/metrics"
PAGE_PATH = "/"
LOCAL_PATHS = (PAC_PATH, METRICS_PATH, PAGE_PATH)


class HttpConnectHandshake(Handshake):
    """One client's HTTP proxy request, up to the end of its head."""

    def __init__(self, authenticate: Authenticate | None = None) -> None:
        super().__init__(authenticate)
        self._head = HeadReader()
        self._line: RequestLine | None = None
        self._target: tuple[str, int] = ("", 0)
        self._local: LocalRequest | None = None  # set by the request line, reported at its end
        # An absolute-form request: (origin-form target, authority), and every header line,
        # to rewrite the head once it is complete.
        self._forward: tuple[str, str] | None = None
        self._headers: list[tuple[str, str]] = []
        self._credentials: list[str] = []
        self._framing: dict[str, list[str]] = {}  # http_forward.FRAMING values as received

    @property
    def local(self) -> LocalRequest | None:
        """The event if it asks for a resource of the proxy's own."""
        return self._event if isinstance(self._event, LocalRequest) else None

    @property
    def forwarding(self) -> bool:
        """The request is an absolute-form one, forwarded instead of tunnelled."""
        return self._forward is not None

    def reply(self, code: Reply, bound: tuple[str, int] | None = None) -> bytes:
        """The response to the request; `bound` is accepted for symmetry with SOCKS5 and
        unused: HTTP has no place for it."""
        if code is Reply.SUCCEEDED:
            return b"" if self._forward else ESTABLISHED
        return response(STATUS[code])

    def refusal(self, code: Reply, status: HTTPStatus | None = None) -> tuple[bytes, str]:
        status = status or STATUS[code]
        return response(status), f"HTTP {status.value}"

    def _receive(self) -> bytes:
        buf = self._buffer
        for line in self._head.lines(buf):
            if self._line is None:
                self._line = request_line(line)
                self._dispatch(self._line)
            elif line:
                self._header(line)
            else:
                self._event = self._end_of_head(self._line)
                self._leftover = self._forward_head(self._line) + bytes(buf[self._head.end:])
                buf.clear()
                break
        return b""  # nothing is ever sent before the final reply

    def _dispatch(self, line: RequestLine) -> None:
        """Which of the three requests this is, judged on the request line alone."""
        method, target = line.method, line.target
        if method != "CONNECT" and target.startswith("/"):
            self._local = _local_request(method, target)
        elif method != "CONNECT" and target[:7].lower() == "http://":
            authority, origin = http_forward.origin_form(target[7:])
            if "@" in authority:
                raise bad(f"{method} target {shown(target)}: userinfo in the URL")
            has_port = ":" in authority and not authority.endswith("]")
            self._target = _authority(authority if has_port else f"{authority}:80", method)
            self._forward = (origin, authority)
        elif method != "CONNECT":
            raise refused(HTTPStatus.METHOD_NOT_ALLOWED,
                          f"method {shown(method)} not supported for target {shown(target)} "
                          f"(CONNECT, {', '.join(LOCAL_PATHS)} or http:// URLs)",
                          "Allow: CONNECT")
        else:
            self._target = _authority(target)

    def _header(self, line: str) -> None:
        name, value = header(line)
        lowered = name.lower()
        if lowered == "proxy-authorization":
            self._credentials.append(value)
        elif lowered in http_forward.FRAMING:
            self._framing.setdefault(lowered, []).append(value)
        if self._forward is not None:
            self._headers.append((name, line))

    def _end_of_head(self, line: RequestLine) -> Event:
        if self._local is not None:
            return self._local
        if self._forward is not None and self._head.bare_lf:
            raise bad("bare LF line ending in a request to forward")
        problem = http_forward.framing_problem(line.method, line.version, self._framing)
        if problem is not None:
            raise bad(problem)
        return ConnectRequest(*self._target, "http", self._check_credentials())

    def _forward_head(self, line: RequestLine) -> bytes:
        if self._forward is None:
            return b""
        origin, authority = self._forward
        head = http_forward.rewrite(line.method, origin, line.version, authority, self._headers)
        self._headers.clear()
        return head

    def _check_credentials(self) -> str | None:
        if self._authenticate is None:
            return None
        if len(self._credentials) > 1:
            raise bad("repeated Proxy-Authorization")
        if not self._credentials:
            raise unauthorized("no Proxy-Authorization")
        scheme, _, token = self._credentials[0].partition(" ")
        if scheme.lower() != "basic":
            raise unauthorized(f"Proxy-Authorization scheme {shown(scheme, 16)} is not Basic")
        try:
            decoded = base64.b64decode(token.strip(" ").encode("latin-1"), validate=True)
            user, colon, password = decoded.decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise unauthorized("Proxy-Authorization Basic is not base64 of UTF-8") from None
        if not colon or not user:
            raise unauthorized("Proxy-Authorization Basic without a user name and ':'")
        if not self._authenticate(user, password):
            raise unauthorized(f"authentication failed for user {shown(user)}")
        return user


def _local_request(method: str, target: str) -> LocalRequest:
    """A request for a resource the proxy serves itself."""
    path = target.partition("?")[0]
    if path not in LOCAL_PATHS:
        raise refused(HTTPStatus.NOT_FOUND, f"no resource {shown(target)} here (only "
                                            f"{', '.join(LOCAL_PATHS)})")
    if method not in ("GET", "HEAD"):
        raise refused(HTTPStatus.METHOD_NOT_ALLOWED,
                      f"method {shown(method)} not supported for {path}", "Allow: GET, HEAD")
    return LocalRequest(method, path)


def _authority(target: str, method: str = "CONNECT") -> tuple[str, int]:
    """An authority `host:port`: (host without brackets, port)."""
    host, colon, port = target.rpartition(":")
    if not colon or not 1 <= len(port) <= 5 or not DIGITS.issuperset(port):
        raise bad(f"{method} target {shown(target)} is not host:port")
    number = int(port)
    if not 1 <= number <= 65535:
        raise bad(f"{method} target {shown(target)}: port out of range")
    if host.startswith("[") and host.endswith("]"):
        inner = host[1:-1]
        if ip_literal(inner) is None or ":" not in inner:
            raise bad(f"{method} target {shown(target)}: bad IPv6 literal")
        return inner, number
    if ":" in host or not is_host(host):
        raise bad(f"{method} target {shown(target)}: bad host")
    return host, number
