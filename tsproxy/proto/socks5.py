"""SOCKS5 server handshake (RFC 1928 CONNECT, RFC 1929 username/password), sans-I/O.

A message is judged once it is complete, so a client that sends it in pieces gets exactly the
answer a client that sends it whole gets. Only where the rest of a message cannot even be
framed (a wrong version byte, an unknown address type) is the answer given at once.

Decisions where the RFCs leave room (each has a test):

- NMETHODS 0 is a complete greeting offering nothing: 05 FF, like any greeting without an
  acceptable method. A truncated method list waits for the rest; EOF then closes silently.
- With authentication on, only method 02 is acceptable; with it off, only 00 (a client that
  offers only 02 gets 05 FF rather than a login that checks nothing).
- RFC 1929: ULEN 0 is refused with 01 01 without asking the callback; PLEN 0 (RFC 1929 says
  1..255, but a client given `name:` may send it) is passed on and the callback decides.
  Names and passwords are UTF-8, as the users file is; anything else is 01 01.
- A request with VER != 5 is closed without a reply: a peer that no longer speaks SOCKS5
  would not read one. RSV is ignored, as most servers do.
- CMD is checked before the address, so BIND with an unknown ATYP is REP 7, not REP 8.
- A DOMAINNAME that can never resolve (length 0, NUL, non-ASCII, a label over 63 characters
  such as 255 x 'a', anything failing base.is_host) gets REP 4 "host unreachable", the answer
  a lookup failure gets, instead of REP 1 "general failure". IP literals sent as a name
  ("127.0.0.1" with ATYP 3) are accepted as they are: the egress policy judges addresses,
  not the parser.
- Port 0 can never be connected to: REP 2 "not allowed by ruleset", refused without dialing.
- UDP ASSOCIATE (CMD 3) is an AssociateRequest. Its DST.ADDR/DST.PORT say where the client
  will send from, and RFC 1928 lets it send zeros when it does not know: port 0 and the
  address 0.0.0.0 are fine there. Only the port is of use to the relay (the client's
  address is the one its connection comes from); a name is held to the same rule as
  CONNECT's. BIND stays REP 7.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Callable
from enum import IntEnum
from http import HTTPStatus

from .base import (
    AssociateRequest,
    Authenticate,
    ConnectRequest,
    Failure,
    Handshake,
    ProtocolError,
    Reply,
    is_host,
    shown,
)

VERSION = 5
AUTH_VERSION = 1  # RFC 1929 sub-negotiation version
AUTH_OK = b"\x01\x00"
AUTH_FAILED = b"\x01\x01"
# The largest valid message is an RFC 1929 login: VER ULEN UNAME(255) PLEN PASSWD(255).
# A message is consumed as soon as it is complete, so the buffer never holds a whole one:
# this is the cap on buffered input, by construction.
MAX_BUFFER = 1 + 1 + 255 + 1 + 255


class Method(IntEnum):
    NO_AUTH = 0x00
    GSSAPI = 0x01
    USERNAME_PASSWORD = 0x02
    NO_ACCEPTABLE = 0xFF


class Command(IntEnum):
    CONNECT = 1
    BIND = 2
    UDP_ASSOCIATE = 3


class AddressType(IntEnum):
    IPV4 = 1
    DOMAINNAME = 3
    IPV6 = 4


class _State(enum.Enum):
    GREETING = enum.auto()
    AUTH = enum.auto()
    REQUEST = enum.auto()


def _name(enum_type: type[IntEnum], value: int) -> str:
    try:
        return enum_type(value).name
    except ValueError:
        return str(value)


def _login_failed(reason: str) -> ProtocolError:
    return ProtocolError(reason, AUTH_FAILED, Failure.LOGIN)


class Socks5Handshake(Handshake):
    """One client's SOCKS5 handshake, up to the CONNECT or UDP ASSOCIATE request."""

    def __init__(self, authenticate: Authenticate | None = None) -> None:
        super().__init__(authenticate)
        self._state = _State.GREETING
        self._user: str | None = None

    def _receive(self) -> bytes:
        out = bytearray()
        try:
            while self._event is None:
                answer = self._step()
                if answer is None:
                    break
                out += answer
        except ProtocolError as error:
            # What this call answered before the failure goes out with the failure's reply.
            raise ProtocolError(error.reason, bytes(out) + error.reply, error.kind) from None
        if self._event is not None:
            self._leftover = bytes(self._buffer)
            self._buffer.clear()
        return bytes(out)

    def reply(self, code: Reply, bound: tuple[str, int] | None = None) -> bytes:
        """The reply to the request: BND.ADDR/BND.PORT are `bound` (the outgoing socket's
        local address, an IP literal) or 0.0.0.0:0, which clients accept for errors."""
        if bound is None:
            return bytes((VERSION, code, 0, AddressType.IPV4, 0, 0, 0, 0, 0, 0))
        host, port = bound
        # getsockname() of an IPv6 socket may carry a zone id, which has no place on the wire.
        address = ipaddress.ip_address(host.partition("%")[0])
        kind = AddressType.IPV4 if address.version == 4 else AddressType.IPV6
        return bytes((VERSION, code, 0, kind)) + address.packed + port.to_bytes(2, "big")

    def refusal(self, code: Reply, status: HTTPStatus | None = None) -> tuple[bytes, str]:
        return self.reply(code), f"REP {code}"

    def _step(self) -> bytes | None:
        """Parse one message if it is complete: its answer, or None to wait for more."""
        if self._state is _State.GREETING:
            return self._greeting()
        if self._state is _State.AUTH:
            return self._login()
        return self._request()

    def _framed(self, version: int, size: int,
                wrong: Callable[[int], ProtocolError]) -> bytearray | None:
        """The buffer once it holds `size` bytes; a wrong version byte fails at once."""
        buf = self._buffer
        if buf and buf[0] != version:
            raise wrong(buf[0])
        return buf if len(buf) >= size else None

    def _greeting(self) -> bytes | None:
        buf = self._framed(VERSION, 2, lambda v: ProtocolError(f"not SOCKS5: version byte {v}"))
        if buf is None or len(buf) < 2 + buf[1]:
            return None
        end = 2 + buf[1]
        offered = bytes(buf[2:end])
        del buf[:end]
        wanted = Method.NO_AUTH if self._authenticate is None else Method.USERNAME_PASSWORD
        if wanted not in offered:
            names = ",".join(_name(Method, m) for m in offered) or "none"
            raise ProtocolError(f"no acceptable method: wanted {wanted.name}, offered {names}",
                                bytes((VERSION, Method.NO_ACCEPTABLE)))
        self._state = _State.REQUEST if wanted is Method.NO_AUTH else _State.AUTH
        return bytes((VERSION, wanted))

    def _login(self) -> bytes | None:
        buf = self._framed(AUTH_VERSION, 2,
                           lambda v: _login_failed(f"RFC 1929 login with version byte {v}"))
        if buf is None:
            return None
        ulen = buf[1]
        if len(buf) < 3 + ulen:
            return None
        plen = buf[2 + ulen]
        end = 3 + ulen + plen
        if len(buf) < end:
            return None
        raw_user, raw_password = bytes(buf[2:2 + ulen]), bytes(buf[3 + ulen:end])
        del buf[:end]
        if ulen == 0:
            raise _login_failed("RFC 1929 login with an empty user name")
        try:
            user, password = raw_user.decode(), raw_password.decode()
        except UnicodeDecodeError:
            raise _login_failed(f"RFC 1929 login not in UTF-8 (user {shown(raw_user)})") from None
        assert self._authenticate is not None  # only reached when authentication is on
        if not self._authenticate(user, password):
            raise _login_failed(f"authentication failed for user {shown(user)}")
        self._user = user
        self._state = _State.REQUEST
        return AUTH_OK

    def _request(self) -> bytes | None:
        buf = self._framed(VERSION, 4, lambda v: ProtocolError(f"request with version byte {v}"))
        if buf is None:
            return None
        command, kind = buf[1], buf[3]
        if kind == AddressType.IPV4:
            start, size = 4, 4
        elif kind == AddressType.IPV6:
            start, size = 4, 16
        elif kind == AddressType.DOMAINNAME:
            if len(buf) < 5:
                return None
            start, size = 5, buf[4]
        else:
            # The address cannot be framed, so answer now; CMD still comes first.
            self._refuse_command(command)
            raise ProtocolError(f"address type {kind} not supported",
                                self.reply(Reply.ADDRESS_TYPE_NOT_SUPPORTED))
        end = start + size + 2
        if len(buf) < end:
            return None
        raw = bytes(buf[start:start + size])
        port = int.from_bytes(buf[end - 2:end], "big")
        del buf[:end]
        self._refuse_command(command)
        if kind == AddressType.IPV4:
            host = str(ipaddress.IPv4Address(raw))
        elif kind == AddressType.IPV6:
            host = str(ipaddress.IPv6Address(raw))
        else:
            host = self._domain(raw)
        if command == Command.UDP_ASSOCIATE:
            self._event = AssociateRequest(host, port, "socks5", self._user)
            return b""
        if port == 0:
            raise ProtocolError(f"port 0 (host {shown(host)})", self.reply(Reply.NOT_ALLOWED))
        self._event = ConnectRequest(host, port, "socks5", self._user)
        return b""

    def _refuse_command(self, command: int) -> None:
        if command not in (Command.CONNECT, Command.UDP_ASSOCIATE):
            raise ProtocolError(f"command {_name(Command, command)} not supported",
                                self.reply(Reply.COMMAND_NOT_SUPPORTED))

    def _domain(self, raw: bytes) -> str:
        try:
            host = raw.decode("ascii")
        except UnicodeDecodeError:
            host = ""
        if not is_host(host):
            raise ProtocolError(f"domain name {shown(raw)} is not a host name",
                                self.reply(Reply.HOST_UNREACHABLE))
        return host
