"""Sans-I/O proxy handshakes: bytes in, reply bytes and one typed event out.

Nothing here touches a socket, a clock or a logger, so every parser can be fed byte by byte and
fuzzed. Both handshakes have the h11 shape::

    hs = Socks5Handshake(authenticate)         # or HttpConnectHandshake(authenticate)
    send(hs.receive_data(data))                # b"" means EOF; may raise ProtocolError
    match hs.event:                            # None until the request is complete
        case ConnectRequest(): dial, send(hs.reply(Reply.SUCCEEDED, bound)), forward hs.leftover
                               or, refused, send(hs.refusal(code, status)[0])
        case AssociateRequest(): (SOCKS5 only) relay datagrams, each carrying the header
                               socks5_udp.parse_datagram reads, until the connection closes
        case LocalRequest(): (HTTP only) send(local_reply(event, type, text)) and close

ProtocolError.reply holds the exact bytes to send before closing (b"" means just close) and
ProtocolError.kind what failed. The caller decides on these typed values; it never reads the
bytes it is given to send.
"""

from __future__ import annotations

from .base import (
    AssociateRequest,
    Authenticate,
    ConnectRequest,
    Event,
    Failure,
    LocalRequest,
    ProtocolError,
    Reply,
    is_host,
)
from .http_connect import HttpConnectHandshake
from .http_response import local_reply
from .socks5 import Socks5Handshake

__all__ = [
    "AssociateRequest",
    "Authenticate",
    "ConnectRequest",
    "Event",
    "Failure",
    "HttpConnectHandshake",
    "LocalRequest",
    "ProtocolError",
    "Reply",
    "Socks5Handshake",
    "is_host",
    "local_reply",
    "sniff",
]


def sniff(first: int) -> str | None:
    """Which handshake a connection speaks, from its first byte."""
    if first == 0x05:
        return "socks5"
    # Every HTTP method is a token that starts with a letter; SOCKS4 (0x04), TLS (0x16) and
    # everything else is neither.
    if 0x41 <= first <= 0x5A or 0x61 <= first <= 0x7A:
        return "http"
    return None
