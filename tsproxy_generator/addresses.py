"""IP address types and helpers shared by the conf model and the runtime.

On the generator's boot path: standard library only.
"""

from __future__ import annotations

import ipaddress

# _socket, not socket: socket.py (with selectors) would cost the boot path 2-6 ms.
from _socket import AF_INET, AF_INET6, inet_pton

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


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
