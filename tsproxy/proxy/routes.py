"""Which destinations the kernel routes through tailscale0, for a fast "network unreachable".

Outbound sockets are bound to tailscale0 (SO_BINDTODEVICE), and that alone keeps them off
every other interface. But when no route through the bound interface matches, Linux takes
the destination to be on-link there and sends the SYN into tailscale0 anyway, where
tailscaled drops it: the client would wait out the dial timeout. So the dialer first asks
this table, the unicast routes through the interface in every routing table (tailscaled
keeps its own in table 52), read with one netlink dump and kept until a destination misses,
at most once a second. A stale "yes" costs nothing but the slow answer; the bound socket
still decides.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
import time
from collections.abc import Callable, Iterator

from tsproxy_generator.addresses import Address, Network

REFRESH_EVERY = 1.0  # at most one dump per second, however many destinations miss
CACHE_MAX = 4096

# linux/netlink.h and linux/rtnetlink.h
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
RTM_NEWROUTE, RTM_GETROUTE = 24, 26
RTA_DST, RTA_OIF, RTA_MULTIPATH, RTA_TABLE = 1, 4, 9, 15
RTN_UNICAST = 1
NLMSG = struct.Struct("=IHHII")  # len, type, flags, seq, pid
RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, proto, scope, type
RTATTR = struct.Struct("=HH")
RTNEXTHOP = struct.Struct("=HBBi")  # len, flags, hops, ifindex


class Routes:
    def __init__(self, device: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.device = device
        self._clock = clock
        self._networks: tuple[Network, ...] = ()
        self._seen: dict[Address, bool] = {}
        self._refreshed = -REFRESH_EVERY
        self.error: str | None = None  # why there are no routes at all, for the log

    def covers(self, address: Address) -> bool:
        known = self._seen.get(address)
        if known is None or (not known and self._due()):
            known = self._lookup(address)
        return known

    def _due(self) -> bool:
        return self._clock() - self._refreshed >= REFRESH_EVERY

    def _lookup(self, address: Address) -> bool:
        hit = any(address in network for network in self._networks)
        if not hit and self._due():  # maybe a route came since: look again
            self.refresh()
            hit = any(address in network for network in self._networks)
        if len(self._seen) >= CACHE_MAX:
            self._seen.clear()
        self._seen[address] = hit
        return hit

    def refresh(self) -> None:
        self._refreshed = self._clock()
        self._seen.clear()
        try:
            index = socket.if_nametoindex(self.device)
        except OSError:
            self._networks, self.error = (), f"there is no {self.device} (is tailscaled up?)"
            return
        try:
            self._networks = tuple(set(routes_via(index)))
            self.error = None
        except OSError as error:
            # Without the table, let the bound socket decide: it is the lock that counts.
            self._networks = (ipaddress.IPv4Network("0.0.0.0/0"),
                              ipaddress.IPv6Network("::/0"))
            self.error = f"cannot read the routing tables: {error.strerror}"


def routes_via(index: int) -> Iterator[Network]:
    """Destinations of the unicast routes leaving through interface `index`, every table."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                       socket.NETLINK_ROUTE) as sock:
        sock.settimeout(2.0)
        for family in (socket.AF_INET, socket.AF_INET6):
            body = RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)
            sock.send(NLMSG.pack(NLMSG.size + len(body), RTM_GETROUTE,
                                 NLM_F_REQUEST | NLM_F_DUMP, family, 0) + body)
            yield from _read_dump(sock, family, index)


def _read_dump(sock: socket.socket, family: int, index: int) -> Iterator[Network]:
    while True:
        data = sock.recv(1 << 16)
        offset = 0
        while offset + NLMSG.size <= len(data):
            length, kind, _flags, _seq, _pid = NLMSG.unpack_from(data, offset)
            if kind == NLMSG_DONE:
                return
            if kind == NLMSG_ERROR:
                code = struct.unpack_from("=i", data, offset + NLMSG.size)[0]
                raise OSError(-code, os.strerror(-code))
            if kind == RTM_NEWROUTE:
                network = _route(data[offset + NLMSG.size:offset + length], family, index)
                if network is not None:
                    yield network
            offset += (length + 3) & ~3
            if length < NLMSG.size:
                return  # malformed: never loop on it


def _route(message: bytes, family: int, index: int) -> Network | None:
    rt_family, dst_len, _src, _tos, _table, _proto, _scope, kind, _flags = \
        RTMSG.unpack_from(message)
    if rt_family != family or kind != RTN_UNICAST:
        return None
    destination = b"\0" * (4 if family == socket.AF_INET else 16)
    via_index = False
    offset = RTMSG.size
    while offset + RTATTR.size <= len(message):
        length, attribute = RTATTR.unpack_from(message, offset)
        if length < RTATTR.size:
            break
        value = message[offset + RTATTR.size:offset + length]
        if attribute == RTA_DST:
            destination = value
        elif attribute == RTA_OIF:
            via_index = struct.unpack("=i", value)[0] == index
        elif attribute == RTA_MULTIPATH:
            via_index = via_index or index in _nexthops(value)
        offset += (length + 3) & ~3
    if not via_index:
        return None
    address = ipaddress.ip_address(destination)
    return ipaddress.ip_network((address, dst_len), strict=False)


def _nexthops(value: bytes) -> Iterator[int]:
    offset = 0
    while offset + RTNEXTHOP.size <= len(value):
        length, _flags, _hops, ifindex = RTNEXTHOP.unpack_from(value, offset)
        yield ifindex
        if length < RTNEXTHOP.size:
            return
        offset += (length + 3) & ~3
