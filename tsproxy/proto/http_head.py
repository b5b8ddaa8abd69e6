"""An HTTP/1.x request head, read line by line as it arrives (RFC 9112 2-5), sans-I/O.

Only the syntax is judged here; what the request asks for is http_connect's job. The request
line is handed over as soon as it ends, so a client that is not speaking HTTP at all (an SSH
banner, say) is answered at once instead of at the handshake timeout.

- Lines end in CRLF; a bare LF is accepted (RFC 9112 2.2 allows it; h11 does) and noted.
- Request line: exactly `METHOD SP target SP HTTP/d.d`, else 400. HTTP/2.0 and friends: 505.
  Methods are case-sensitive tokens.
- Headers: `name: value` with a token name; obsolete line folding, CR or NUL in a value: 400.
  Values are never quoted in a reason: one may be a password.
- The head (request line through the empty line) may be 64 KiB; beyond that 431.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from http import HTTPStatus
from typing import NamedTuple

from .base import shown
from .http_response import bad, refused

MAX_HEAD = 64 * 1024
# RFC 9110 5.6.2 token characters (methods, field names, coding names).
TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
DIGITS = frozenset("0123456789")

_VERSION = re.compile(r"HTTP/([0-9])\.[0-9]")


class RequestLine(NamedTuple):  # a tuple: made once per connection, so cheap to make
    method: str
    target: str
    version: str  # "HTTP/1.0" or "HTTP/1.1"


class HeadReader:
    """The lines of one request head, taken from the front of a growing buffer."""

    def __init__(self) -> None:
        self.end = 0  # where the next unread line starts: after the head, the payload does
        self._scanned = 0  # no LF before this offset: byte-by-byte feeding stays linear
        self.bare_lf = False  # some line ended in LF alone

    def lines(self, buf: bytearray) -> Iterator[str]:
        """Every complete line not read yet, without its line ending, as latin-1 (which
        gives back the client's very bytes when encoded again)."""
        while True:
            newline = buf.find(b"\n", self._scanned)
            if newline < 0:
                self._scanned = len(buf)
                if len(buf) > MAX_HEAD:
                    raise _too_large()
                return
            end = newline + 1
            if end > MAX_HEAD:
                raise _too_large()
            line = bytes(buf[self.end:newline])
            self.bare_lf = self.bare_lf or not line.endswith(b"\r")
            self.end = self._scanned = end
            yield line.removesuffix(b"\r").decode("latin-1")


def request_line(line: str) -> RequestLine:
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
    return RequestLine(method, target, version)


def header(line: str) -> tuple[str, str]:
    """A header line's (name, value), the value without the whitespace around it."""
    if line[0] in " \t":
        raise bad("obsolete header line folding")
    name, colon, value = line.partition(":")
    if not colon:
        raise bad("header line without ':'")
    if not name or not TCHAR.issuperset(name):
        raise bad(f"bad header name {shown(name, 32)}")
    value = value.strip(" \t")
    if "\r" in value or "\0" in value:
        raise bad(f"CR or NUL in header {shown(name)}")
    return name, value


def _too_large() -> Exception:
    return refused(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                   f"request head over {MAX_HEAD} bytes")
