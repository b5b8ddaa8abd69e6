"""IP address types and helpers shared by the conf model and the runtime.

On the generator's boot path: standard library only.
"""

from __future__ import annotations

import ipaddress
import re

# _socket, not socket: socket.py (with selectors) would cost the boot path 2-6 ms.
from _socket import AF_INET, AF_INET6, inet_pton

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# A label of a name a client may ask for (the proxy's parsers and the resolver agree on it):
# letters, digits, '_' (real internal names have them) and '-' anywhere, since tsproxy's own
# IPv6-embedded names start or end with one ("--1.fgpu" is ::1, "fd00--.fgpu" is fd00::).
HOST_LABEL = re.compile(r"[A-Za-z0-9_-]{1,63}")
# A label of a name tsproxy itself publishes (a conf's suffix or label): RFC 1123's letters,
# digits and inner hyphens, lower case, so that every resolver and browser takes it.
PUBLISHED_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


def is_host_name(text: str) -> bool:
    """A DNS name that could ever be looked up: ASCII labels of 1..63 characters, at most 253
    characters plus one optional trailing dot (RFC 1035's 255-octet wire limit). Anything
    else (empty, NUL, spaces, non-ASCII, a 64-character label) never resolves."""
    name = text[:-1] if text.endswith(".") else text
    return 0 < len(name) <= 253 and all(HOST_LABEL.fullmatch(label) for label in name.split("."))


def endpoint(host: object, port: int) -> str:
    """HOST:PORT as people and URLs write it: an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def ip_literal(host: str) -> Address | None:
    """`host` as an address if it is an IP literal (inet_pton's strict forms: no leading
    zeros, no zone id such as fe80::1%eth0), else None. The proxy's common case, so cheaper
    than ipaddress' parser."""
    try:
        return ipaddress.IPv4Address(inet_pton(AF_INET, host))
    except (OSError, ValueError):  # ValueError: a NUL in `host`
        pass
    if ":" in host:
        try:
            return ipaddress.IPv6Address(inet_pton(AF_INET6, host))
        except (OSError, ValueError):  # ValueError: a NUL in `host`
            pass
    return None


def unmapped(address: Address) -> Address:
    """A v4 peer on a dual-stack socket shows up as ::ffff:A.B.C.D; the kernel and the
    allow lists mean A.B.C.D."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
