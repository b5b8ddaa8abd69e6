"""HTTP proxy server handshake: CONNECT (RFC 9110 9.3.6, RFC 9112, RFC 7617 Basic), one
forwarded absolute-form request, and the PAC file, sans-I/O.

The head is read line by line as it arrives. The request line is judged as soon as it ends, so
a client that is not speaking HTTP at all (an SSH banner, say) is answered at once instead of
at the handshake timeout; the credentials are judged once the empty line ends the head.

Decisions (each has a test):

- Lines end in CRLF. A bare LF is accepted for CONNECT and the PAC file (RFC 9112 2.2 allows
  it; h11 does) but is 400 in a request to forward, whose head another parser reads next.
- Request line: exactly `METHOD SP target SP HTTP/d.d`, else 400. HTTP/2.0 and friends: 505.
  Methods are case-sensitive.
- Any other method with an absolute-form `http://` target (scheme in any case) is a request
  to forward: .request names the URL's host and port (80 by default), with the same host
  rules as CONNECT and the same login; .leftover starts with the head rewritten for the
  server (http_forward.rewrite) and reply(SUCCEEDED) is empty: the server's own response is
  the answer. Userinfo in the URL: 400. Any other target with a method other than CONNECT
  (https:// URLs, `*`): 405 with `Allow: CONNECT`.
- One origin-form resource: `GET /proxy.pac` (or HEAD, a query string allowed) is a PAC
  request (.pac, instead of .request): no target, and no credentials asked for, because
  browsers fetch their PAC file without proxy credentials. Another method on it: 405 with
  `Allow: GET, HEAD`; any other origin-form path: 404.
- CONNECT target: authority-form only. `host:port` or `[IPv6]:port`; the port is 1..5 ASCII digits
  with a value of 1..65535 (port 0 is 400: in HTTP it is a malformed authority, not a policy
  refusal). The host must pass base.is_host; zone ids, userinfo, unbracketed IPv6: 400.
- Headers: `name: value` with a token name; obsolete line folding, CR or NUL in a value: 400.
  Only Proxy-Authorization is used, and only with authentication on; then a repeated one is
  400 (which one would count?).
- The head (request line through the empty line) may be 64 KiB; beyond that 431.
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
import enum
import re
from http import HTTPStatus

from . import http_forward
from .base import (
    Authenticate,
    ConnectRequest,
    Handshake,
    PacRequest,
    Reply,
    ip_literal,
    is_host,
    shown,
)
from .http_forward import DIGITS, TCHAR
from .http_response import ESTABLISHED, STATUS, bad, refused, response, unauthorized

MAX_HEAD = 64 * 1024
PAC_PATH = "/proxy.pac"

_VERSION = re.compile(r"HTTP/([0-9])\.[0-9]")


class _State(enum.Enum):
    REQUEST_LINE = enum.auto()
    HEADERS = enum.auto()
    DONE = enum.auto()


class HttpConnectHandshake(Handshake):
    """One client's HTTP CONNECT request, up to the end of its head."""

    def __init__(self, authenticate: Authenticate | None = None) -> None:
        super().__init__(authenticate)
        self._state = _State.REQUEST_LINE
        self._line_start = 0  # where the next unread line starts in _buffer
        self._scanned = 0  # no LF before this offset: byte-by-byte feeding stays linear
        self._target: tuple[str, int] = ("", 0)
        self._credentials: list[str] = []
        self._pac_method: str | None = None  # set by the request line, reported at its end
        # An absolute-form request: (method, origin-form target, version, authority), and
        # every header line, to rewrite the head once it is complete.
        self._forward: tuple[str, str, str, str] | None = None
        self._headers: list[tuple[str, str]] = []
        self._method = self._version = ""
        self._framing: dict[str, list[str]] = {}  # http_forward.FRAMING values as received
        self._bare_lf = False

    @property
    def pac(self) -> PacRequest | None:
        """The event if it asks for the PAC file."""
        return self._event if isinstance(self._event, PacRequest) else None

    @property
    def forwarding(self) -> bool:
        """The request is an absolute-form one, forwarded instead of tunnelled."""
        return self._forward is not None

    def _complete(self) -> bool:
        return self._state is _State.DONE

    def _receive(self) -> bytes:
        # Nothing is ever sent before the final reply.
        self._parse()
        return b""

    def reply(self, code: Reply, bound: tuple[str, int] | None = None) -> bytes:
        """The response to the request; `bound` is accepted for symmetry with SOCKS5 and
        unused: HTTP has no place for it."""
        if code is Reply.SUCCEEDED:
            return b"" if self._forward else ESTABLISHED
        return response(STATUS[code])

    def refusal(self, code: Reply, status: HTTPStatus | None = None) -> tuple[bytes, str]:
        status = status or STATUS[code]
        return response(status), f"HTTP {status.value}"

    def _parse(self) -> None:
        buf = self._buffer
        while self._state is not _State.DONE:
            newline = buf.find(b"\n", self._scanned)
            if newline < 0:
                self._scanned = len(buf)
                if len(buf) > MAX_HEAD:
                    raise refused(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                                  f"request head over {MAX_HEAD} bytes")
                return
            end = newline + 1
            if end > MAX_HEAD:
                raise refused(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                              f"request head over {MAX_HEAD} bytes")
            line = bytes(buf[self._line_start:newline])
            self._bare_lf = self._bare_lf or not line.endswith(b"\r")
            line = line.removesuffix(b"\r")
            self._line_start = self._scanned = end
            if self._state is _State.REQUEST_LINE:
                self._request_line(line.decode("latin-1"))
                self._state = _State.HEADERS
            elif line:
                self._header(line.decode("latin-1"))
            else:
                if self._pac_method is not None:
                    self._event = PacRequest(self._pac_method)
                else:
                    self._check_framing()
                    user = self._check_credentials()
                    self._event = ConnectRequest(*self._target, "http", user)
                self._leftover = self._forward_head() + bytes(buf[end:])
                buf.clear()
                self._state = _State.DONE

    def _request_line(self, line: str) -> None:
        parts = line.split(" ")
        if len(parts) != 3:
            raise bad(f"bad request line {shown(line)}")
        method, target, version = parts
        if not method or not TCHAR.issuperset(method):
            raise bad(f"bad request line {shown(line)}")
        matched = _VERSION.fullmatch(version)
        if matched is None:
            raise bad(f"bad request line {shown(line)}")
        if matched.group(1) != "1":
            raise refused(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED,
                          f"version {shown(version)} not supported")
        self._method, self._version = method, version
        if method != "CONNECT" and target.startswith("/"):
            self._pac_method = _origin_form(method, target)
            return
        if method != "CONNECT" and target[:7].lower() == "http://":
            authority, origin = http_forward.origin_form(target[7:])
            if "@" in authority:
                raise bad(f"{method} target {shown(target)}: userinfo in the URL")
            has_port = ":" in authority and not authority.endswith("]")
            self._target = _authority(authority if has_port else f"{authority}:80", method)
            self._forward = (method, origin, version, authority)
            return
        if method != "CONNECT":
            raise refused(HTTPStatus.METHOD_NOT_ALLOWED,
                          f"method {shown(method)} not supported for target {shown(target)} "
                          f"(CONNECT, /proxy.pac or http:// URLs)", "Allow: CONNECT")
        self._target = _authority(target)

    def _check_framing(self) -> None:
        if self._forward is not None and self._bare_lf:
            raise bad("bare LF line ending in a request to forward")
        problem = http_forward.framing_problem(self._method, self._version, self._framing)
        if problem is not None:
            raise bad(problem)

    def _forward_head(self) -> bytes:
        if self._forward is None:
            return b""
        method, origin, version, authority = self._forward
        head = http_forward.rewrite(method, origin, version, authority, self._headers)
        self._headers.clear()
        return head

    def _header(self, line: str) -> None:
        if line[0] in " \t":
            raise bad("obsolete header line folding")
        # Never a header's value in a reason: it may be a password.
        name, colon, value = line.partition(":")
        if not colon:
            raise bad("header line without ':'")
        if not name or not TCHAR.issuperset(name):
            raise bad(f"bad header name {shown(name, 32)}")
        value = value.strip(" \t")
        if "\r" in value or "\0" in value:
            raise bad(f"CR or NUL in header {shown(name)}")
        lowered = name.lower()
        if lowered == "proxy-authorization":
            self._credentials.append(value)
        elif lowered in http_forward.FRAMING:
            self._framing.setdefault(lowered, []).append(value)
        if self._forward is not None:
            self._headers.append((name, line))

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


def _origin_form(method: str, target: str) -> str:
    """The method of a request for the one resource the proxy serves itself."""
    if target.partition("?")[0] != PAC_PATH:
        raise refused(HTTPStatus.NOT_FOUND, f"no resource {shown(target)} here (only {PAC_PATH})")
    if method not in ("GET", "HEAD"):
        raise refused(HTTPStatus.METHOD_NOT_ALLOWED,
                      f"method {shown(method)} not supported for {PAC_PATH}", "Allow: GET, HEAD")
    return method


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
