"""The header of every SOCKS5 UDP datagram (RFC 1928 section 7), sans-I/O.

    +-----+------+------+----------+----------+----------+
    | RSV | FRAG | ATYP | DST.ADDR | DST.PORT |   DATA   |
    |  2  |  1   |  1   | Variable |    2     | Variable |
    +-----+------+------+----------+----------+----------+

A datagram is judged whole, as it arrived; there is nothing to wait for. Decisions where the
RFC leaves room (each has a test):

- FRAG other than 0 is refused: RFC 1928 lets a relay that does not reassemble drop those,
  and no client worth serving fragments (the relay would have to hold a queue per client).
- RSV is ignored, as the TCP request's is.
- A header cut short, an unknown ATYP, a name that can never resolve (length 0, NUL,
  non-ASCII, anything failing base.is_host) and port 0 are malformed. An empty DATA is not:
  an empty UDP payload is a datagram too.
- Answers carry the address they came from, always an IP (ATYP 1 or 4): a v4-mapped IPv6
  address goes out as the IPv4 address it is.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from tsproxy_generator.addresses import unmapped

from .base import is_host, shown
from .socks5 import AddressType

# Why a datagram was refused, as the relay counts it.
FRAGMENT = "fragment"
MALFORMED = "malformed"


class DatagramError(Exception):
    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind, self.reason = kind, reason


@dataclass(frozen=True)
class Datagram:
    host: str  # an IP literal (no brackets) or a host name, as the client sent it
    port: int  # 1..65535
    data: bytes


def _malformed(reason: str) -> DatagramError:
    return DatagramError(MALFORMED, reason)


def parse_datagram(raw: bytes) -> Datagram:
    """A client's datagram: where it goes and what it carries; DatagramError otherwise."""
    if len(raw) < 4:
        raise _malformed(f"datagram of {len(raw)} bytes, shorter than any header")
    if raw[2] != 0:
        raise DatagramError(FRAGMENT, f"fragment {raw[2]} (fragments are not reassembled)")
    kind = raw[3]
    if kind == AddressType.IPV4:
        start, size = 4, 4
    elif kind == AddressType.IPV6:
        start, size = 4, 16
    elif kind == AddressType.DOMAINNAME and len(raw) > 4:
        start, size = 5, raw[4]
    elif kind == AddressType.DOMAINNAME:
        raise _malformed("datagram cut short in its name's length")
    else:
        raise _malformed(f"address type {kind} unknown")
    end = start + size + 2
    if len(raw) < end:
        raise _malformed(f"datagram of {len(raw)} bytes cut short in its header "
                         f"({end} needed)")
    packed = raw[start:start + size]
    if kind == AddressType.IPV4:
        host = str(ipaddress.IPv4Address(packed))
    elif kind == AddressType.IPV6:
        host = str(ipaddress.IPv6Address(packed))
    else:
        host = packed.decode("ascii", "replace")
        if not packed.isascii() or not is_host(host):
            raise _malformed(f"name {shown(packed)} is not a host name")
    port = int.from_bytes(raw[end - 2:end], "big")
    if port == 0:
        raise _malformed(f"port 0 (host {shown(host)})")
    return Datagram(host, port, raw[end:])


def datagram_header(host: str, port: int) -> bytes:
    """The header that goes before an answer from `host` (an IP literal) port `port`."""
    # recvfrom() of an IPv6 socket may carry a zone id, which has no place on the wire.
    address = unmapped(ipaddress.ip_address(host.partition("%")[0]))
    kind = AddressType.IPV4 if address.version == 4 else AddressType.IPV6
    return bytes((0, 0, 0, kind)) + address.packed + port.to_bytes(2, "big")
