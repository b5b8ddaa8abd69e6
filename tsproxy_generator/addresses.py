"""IP address types and helpers shared by the conf model and the runtime.

On the generator's boot path: standard library only.
"""

from __future__ import annotations

import ipaddress

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def endpoint(host: object, port: int) -> str:
    """HOST:PORT as people and URLs write it: an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def unmapped(address: Address) -> Address:
    """A v4 peer on a dual-stack socket shows up as ::ffff:A.B.C.D; the kernel and the
    allow lists mean A.B.C.D."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
