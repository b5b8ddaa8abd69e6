"""The head of an absolute-form request (`GET http://host/path HTTP/1.1`), rewritten for the
origin server (RFC 9112 3.2.2, RFC 9110 7.6.1), sans-I/O.

The proxy relays the connection as a tunnel after this head, so it forwards exactly one
request: `Connection: close` tells the server so, and a client that reuses the connection
sees it close and opens a new one. Headers for this hop only are dropped: Connection and
every header it names, Proxy-Connection, Keep-Alive, Proxy-Authorization (the password is
ours, not the server's); Host is the URL's authority, whatever the client sent.
Transfer-Encoding stays: the body is relayed as it comes.
"""

from __future__ import annotations

from collections.abc import Sequence

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
    named = {token.strip().lower() for name, line in headers if name.lower() == "connection"
             for token in line.partition(":")[2].split(",")}
    kept = [line for name, line in headers
            if name.lower() not in HOP_BY_HOP and name.lower() not in named]
    lines = [f"{method} {target} {version}", f"Host: {authority}", *kept,
             "Connection: close", "", ""]
    # The head was read as latin-1, so this gives back the client's very bytes.
    return "\r\n".join(lines).encode("latin-1")
