"""The head of an absolute-form request (`GET http://host/path HTTP/1.1`), rewritten for the
origin server (RFC 9112 3.2.2, RFC 9110 7.6.1), sans-I/O.

The proxy relays the connection as a tunnel after this head, so it forwards exactly one
request: `Connection: close` tells the server so, and a client that reuses the connection
sees it close and opens a new one. Headers for this hop only are dropped: Connection and
every header it names, Proxy-Connection, Keep-Alive, Proxy-Authorization (the password is
ours, not the server's); Host is the URL's authority, whatever the client sent.
Transfer-Encoding stays: the body is relayed as it comes.

Because the body is relayed unread, the server alone decides where it ends, so a request
whose framing two parsers could read differently (RFC 9112 6, request smuggling) never
goes on: framing_problem says why it is refused with 400.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from .base import shown
from .http_head import DIGITS, TCHAR

FRAMING = ("content-length", "transfer-encoding", "connection")

HOP_BY_HOP = frozenset({"connection", "proxy-connection", "keep-alive", "proxy-authorization",
                        "host"})


def origin_form(url_rest: str) -> tuple[str, str]:
    """(authority, origin-form target) of an absolute http URL without its "http://"."""
    cut = min((i for i in (url_rest.find(c) for c in "/?#") if i >= 0), default=len(url_rest))
    authority, rest = url_rest[:cut], url_rest[cut:].partition("#")[0]
    return authority, rest if rest.startswith("/") else "/" + rest


def rewrite(method: str, target: str, version: str, authority: str,
            headers: Sequence[tuple[str, str]]) -> bytes:
    """The request head to send upstream; `headers` are (name, whole line) as received."""
    named = connection_tokens(line.partition(":")[2] for name, line in headers
                              if name.lower() == "connection")
    kept = [line for name, line in headers
            if name.lower() not in HOP_BY_HOP and name.lower() not in named]
    lines = [f"{method} {target} {version}", f"Host: {authority}", *kept,
             "Connection: close", "", ""]
    # The head was read as latin-1, so this gives back the client's very bytes.
    return "\r\n".join(lines).encode("latin-1")


def framing_problem(method: str, version: str, fields: Mapping[str, Sequence[str]]) -> str | None:
    """Why a request's body framing is refused (RFC 9112 6.1-6.3), or None. `fields` holds
    the values of the FRAMING headers as received, one entry per header line."""
    lengths, codings = fields.get("content-length", []), fields.get("transfer-encoding", [])
    if len(lengths) > 1 or any("," in value for value in lengths):
        return "Content-Length given more than once"
    if lengths and not (lengths[0] and DIGITS.issuperset(lengths[0])):
        return f"Content-Length {shown(lengths[0], 32)} is not a decimal number"
    if lengths and codings:
        return "both Content-Length and Transfer-Encoding"
    if codings:
        if version == "HTTP/1.0":
            return "Transfer-Encoding in an HTTP/1.0 request"
        names = [coding.strip(" \t").lower() for value in codings for coding in value.split(",")]
        if not all(name and TCHAR.issuperset(name) for name in names) \
                or names[-1] != "chunked" or names.count("chunked") > 1:
            return (f"Transfer-Encoding {shown(', '.join(codings), 32)} does not end in "
                    f"chunked, once")
    if method == "CONNECT" and (codings or (lengths and int(lengths[0]) > 0)):
        return "CONNECT with a body"
    # Connection names headers to drop on the way (rewrite): never the ones that frame.
    if connection_tokens(fields.get("connection", [])) & {"content-length", "transfer-encoding"}:
        return "Connection names Content-Length or Transfer-Encoding"
    return None


def connection_tokens(values: Iterable[str]) -> set[str]:
    """The header names Connection header values list, lower case."""
    return {token.strip(" \t").lower() for value in values for token in value.split(",")}
