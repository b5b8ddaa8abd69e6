"""What both handshakes share: reply codes, the error, the events, small helpers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, IntEnum
from http import HTTPStatus

# Re-exported for the parsers next door, which import their helpers from here.
from tsproxy_generator.addresses import ip_literal, is_host_name

# authenticate(user, password) -> bool. The callback compares in constant time; the parsers
# call it exactly once per attempt, whatever the user name, so they add no timing of their own.
Authenticate = Callable[[str, str], bool]


class Reply(IntEnum):
    """RFC 1928 REP codes; the HTTP handshake maps them to status codes."""

    SUCCEEDED = 0
    GENERAL_FAILURE = 1
    NOT_ALLOWED = 2
    NETWORK_UNREACHABLE = 3
    HOST_UNREACHABLE = 4
    CONNECTION_REFUSED = 5
    TTL_EXPIRED = 6
    COMMAND_NOT_SUPPORTED = 7
    ADDRESS_TYPE_NOT_SUPPORTED = 8


class Failure(Enum):
    """Why a handshake failed, as the log and the counters name it."""

    BAD_HANDSHAKE = "bad handshake"
    LOGIN = "login"  # the credentials were missing, malformed or wrong


class ProtocolError(Exception):
    """The handshake failed: send ``reply`` (possibly b"") and close; ``reason`` is for the log
    and ``kind`` says what failed, so the caller never reads the reply to learn it.

    ``reply`` also carries whatever the same receive_data() call produced before the failure
    (e.g. the method selection before a failed RFC 1929 login), so a client that pipelines
    still reads every answer in order.
    """

    def __init__(self, reason: str, reply: bytes = b"",
                 kind: Failure = Failure.BAD_HANDSHAKE) -> None:
        super().__init__(reason)
        self.reason = reason
        self.reply = reply
        self.kind = kind


@dataclass(frozen=True)
class ConnectRequest:
    host: str  # IP literal (no brackets) or a host name, as the client sent it
    port: int  # 1..65535
    protocol: str  # "socks5" or "http"
    user: str | None  # the authenticated user, if authentication is on


@dataclass(frozen=True)
class AssociateRequest:
    """SOCKS5 UDP ASSOCIATE (RFC 1928 section 7): relay datagrams for the client, as long as
    this connection lasts."""

    host: str  # where the client says it will send from: an IP literal, often 0.0.0.0
    port: int  # 0: not known yet (the client's first datagram tells)
    protocol: str  # "socks5"
    user: str | None  # the authenticated user, if authentication is on


@dataclass(frozen=True)
class LocalRequest:
    """`GET /proxy.pac` or `GET /metrics` (or HEAD), HTTP only: a resource the proxy serves
    itself; the server answers with local_reply() and closes."""

    method: str  # "GET" or "HEAD"
    path: str  # one of http_connect.LOCAL_PATHS, without the query


# What a complete handshake asks for: a tunnel (CONNECT, or HTTP forwarding, whose rewritten
# head is the tunnel's first payload), a UDP relay (SOCKS5 only) or a resource of the
# proxy's own (HTTP only).
Event = ConnectRequest | AssociateRequest | LocalRequest


class Handshake:
    """What the SOCKS5 and HTTP CONNECT handshakes hold alike; each adds its own states."""

    def __init__(self, authenticate: Authenticate | None) -> None:
        self._authenticate = authenticate
        self._buffer = bytearray()
        self._event: Event | None = None
        self._leftover = b""
        self._failed = False

    def receive_data(self, data: bytes) -> bytes:
        """Feed bytes from the client (b"" = EOF); returns the bytes to send now. A
        ProtocolError ends the handshake: every later call raises too."""
        if self._failed:
            raise ProtocolError("handshake already failed")
        if self._complete():
            # The caller read past the request: that is payload too.
            self._leftover += data
            return b""
        if not data:
            self._fail()
            raise ProtocolError("client closed the connection mid-handshake")
        self._buffer += data
        try:
            return self._receive()
        except ProtocolError:
            self._fail()
            raise

    def _complete(self) -> bool:
        """The handshake has parsed all it will: later bytes are payload."""
        return self._event is not None

    def _receive(self) -> bytes:
        """Parse what `_buffer` holds: the bytes to send now, or ProtocolError."""
        raise NotImplementedError

    def _fail(self) -> None:
        self._failed = True
        self._buffer.clear()

    def reply(self, code: Reply, bound: tuple[str, int] | None = None) -> bytes:
        """The bytes answering the request with `code`; `bound` is the outgoing socket's
        local address, for a success."""
        raise NotImplementedError

    def refusal(self, code: Reply, status: HTTPStatus | None = None) -> tuple[bytes, str]:
        """The bytes refusing the request, and how the log names that answer. `status` is an
        HTTP status more precise than `code`'s (SOCKS5 has none)."""
        raise NotImplementedError

    @property
    def event(self) -> Event | None:
        """What the client asks for, once its request is complete (and the login, if one is
        required, passed)."""
        return self._event

    @property
    def request(self) -> ConnectRequest | None:
        """The event if it asks for a tunnel."""
        return self._event if isinstance(self._event, ConnectRequest) else None

    @property
    def leftover(self) -> bytes:
        """Bytes the client sent after the request: payload to forward once dialed."""
        return self._leftover

    @property
    def buffered(self) -> int:
        """Bytes held while waiting for the rest of a message (capped by each protocol)."""
        return len(self._buffer)


def is_host(text: str) -> bool:
    """An IP literal or a DNS host name that could ever resolve (addresses.is_host_name)."""
    return ip_literal(text) is not None or is_host_name(text)


def shown(value: str | bytes, limit: int = 64) -> str:
    """Client-supplied text for a log reason: repr() escapes control characters (no log
    injection) and the length is capped (no log flooding)."""
    if len(value) > limit:
        return repr(value[:limit]) + "..."
    return repr(value)
