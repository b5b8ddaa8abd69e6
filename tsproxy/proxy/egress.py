"""Where the proxy may dial: the destination policy, and outbound sockets tied to tailscale0.

Two locks, either one enough on its own:

- every outbound socket is bound to the tailnet's interface (SO_BINDTODEVICE), so the kernel
  only sends it through tailscale0: the veth, the host and the internet behind it cannot be
  reached whatever the name resolved to. A destination no route through tailscale0 covers
  is answered at once with REP 3 "network unreachable" (routes.py says why a check is
  needed for that);
- after resolving, addresses that are never a tailnet peer are refused before dialing
  (REP 2 / HTTP 403): loopback, link-local, multicast, unspecified and broadcast, the veth
  pool and this instance's veth /30, Tailscale's own service addresses, and every address
  of the namespace itself (its tailscale0 addresses, where tailscaled's peer API listens).
  That stops `127.0.0.1.fgpu` (DNS rebinding onto the gateway itself) and `gw.fgpu` (this
  node's own name) even where a route would exist.

A conf's allow_egress lists networks exempt from the second lock, never from the first.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from collections.abc import Callable, Iterable, Sequence

from tsproxy_generator.addresses import Address, Network, unmapped
from tsproxy_generator.config import VETH_POOL

from ..proto import Reply
from .routes import Routes

DEVICE = "tailscale0"
DIAL_TIMEOUT = 10.0
# Keepalive finds a vanished peer of an idle tunnel within KEEPIDLE + KEEPINTVL * KEEPCNT
# seconds, long before the relay's 2 h idle timeout.
KEEPIDLE, KEEPINTVL, KEEPCNT = 120, 30, 4
IP_BIND_ADDRESS_NO_PORT = 24  # linux/in.h; Python's socket module lacks the name

ALWAYS_REFUSED: tuple[Network, ...] = (
    ipaddress.IPv4Network("0.0.0.0/8"),  # "this network", and 0.0.0.0 which means loopback
    ipaddress.IPv4Network("127.0.0.0/8"),
    ipaddress.IPv4Network("169.254.0.0/16"),
    ipaddress.IPv4Network("224.0.0.0/4"),
    ipaddress.IPv4Network("255.255.255.255/32"),
    VETH_POOL,
    ipaddress.IPv4Network("100.100.100.100/32"),  # Tailscale's DNS and metadata service
    ipaddress.IPv6Network("::/128"),
    ipaddress.IPv6Network("::1/128"),
    ipaddress.IPv6Network("fe80::/10"),
    ipaddress.IPv6Network("ff00::/8"),
    ipaddress.IPv6Network("fd7a:115c:a1e0::53/128"),
)

# What a failed connect means to the client, as RFC 1928 says it.
DIAL_ERRORS = {
    errno.ENETUNREACH: Reply.NETWORK_UNREACHABLE,
    errno.ENODEV: Reply.NETWORK_UNREACHABLE,  # no tailscale0: tailscaled is not up
    errno.EHOSTUNREACH: Reply.HOST_UNREACHABLE,
    errno.EHOSTDOWN: Reply.HOST_UNREACHABLE,
    errno.ECONNREFUSED: Reply.CONNECTION_REFUSED,
    errno.ETIMEDOUT: Reply.TTL_EXPIRED,
    errno.EACCES: Reply.NOT_ALLOWED,  # a firewall's reject
    errno.EPERM: Reply.NOT_ALLOWED,
    errno.EADDRNOTAVAIL: Reply.NETWORK_UNREACHABLE,
}
DIAL_KINDS = {Reply.CONNECTION_REFUSED: "dial refused", Reply.TTL_EXPIRED: "dial timeout",
              Reply.NETWORK_UNREACHABLE: "dial unreachable",
              Reply.HOST_UNREACHABLE: "dial unreachable", Reply.NOT_ALLOWED: "dial forbidden"}


class DialError(Exception):
    def __init__(self, reply: Reply, reason: str) -> None:
        super().__init__(reason)
        self.reply = reply
        self.reason = reason

    @property
    def kind(self) -> str:
        """The counter a connection refused for this ends in."""
        return DIAL_KINDS.get(self.reply, "dial error")


class Policy:
    """Which resolved addresses the proxy refuses to dial.

    Networks are kept as (network, mask) integers per IP version: the check runs for every
    connection, and integer masks cost a fraction of ipaddress' `in`.
    """

    def __init__(self, veth_subnet: ipaddress.IPv4Network | None,
                 allow: Iterable[Network] = (),
                 is_local: Callable[[Address], bool] | None = None) -> None:
        refused = list(ALWAYS_REFUSED)
        if veth_subnet is not None and not veth_subnet.subnet_of(VETH_POOL):
            refused.append(veth_subnet)
        self._refused = _masks(refused)
        self._allowed = _masks(allow)
        self._is_local = is_local or LocalAddresses().contains

    def allowed(self, addresses: Sequence[Address]) -> list[Address]:
        return [address for address in addresses if not self.refuses(address)]

    @staticmethod
    def refusal(addresses: Sequence[Address]) -> str:
        """Why none of `addresses` may be dialed, for the log."""
        return f"egress to {addresses[0]} is not allowed (see allow_egress)"

    def refuses(self, address: Address) -> bool:
        address = unmapped(address)  # ::ffff:127.0.0.1 is 127.0.0.1 to the kernel
        value = int(address)
        if any(value & mask == network for network, mask in self._allowed[address.version]):
            return False
        if any(value & mask == network for network, mask in self._refused[address.version]):
            return True
        return self._is_local(address)


class LocalAddresses:
    """Whether an address belongs to this network namespace, asked of the kernel each time.

    tailscaled adds and changes its addresses while the proxy runs (a re-login brings a new
    one), so a list taken at start would go stale. bind() of an unbound socket succeeds
    only for a local address (net.ipv4/ipv6.ip_nonlocal_bind stay 0 in the namespace) and
    a failed bind leaves the socket unbound, so one probe per IP version answers every
    question for one syscall (about 2 us); only a success costs a new probe.
    IP_BIND_ADDRESS_NO_PORT keeps even that from taking a port.
    """

    def __init__(self) -> None:
        self._probes: dict[int, socket.socket] = {}

    def contains(self, address: Address) -> bool:
        probe = self._probes.pop(address.version, None) or _probe(address.version)
        try:
            probe.bind((str(address), 0))
        except OSError as error:
            self._probes[address.version] = probe
            # Anything but "not here" (e.g. a scope id missing) is refused too: unsure.
            return error.errno != errno.EADDRNOTAVAIL
        probe.close()
        return True


def _probe(version: int) -> socket.socket:
    family = socket.AF_INET if version == 4 else socket.AF_INET6
    probe = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    probe.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
    return probe


def _masks(networks: Iterable[Network]) -> dict[int, list[tuple[int, int]]]:
    masks: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
    for network in networks:
        masks[network.version].append((int(network.network_address), int(network.netmask)))
    return masks


class Dialer:
    """Connects from inside the namespace, only through `device`."""

    def __init__(self, device: str = DEVICE, timeout: float = DIAL_TIMEOUT) -> None:
        self.device = device.encode()
        self.timeout = timeout
        self.routes = Routes(device)

    def routed(self, addresses: Sequence[Address]) -> list[Address]:
        routed = [address for address in addresses if self.routes.covers(address)]
        if not routed:
            raise DialError(Reply.NETWORK_UNREACHABLE, self.unrouted(addresses[0]))
        return routed

    def unrouted(self, address: Address) -> str:
        """Why no route through the device covers `address`, for the log."""
        return f"{address}: {self.routes.error or f'no route through {self.device.decode()}'}"

    def datagram(self, addresses: Sequence[Address], port: int) -> socket.socket:
        """A datagram socket connected to the first routed address (connecting a UDP socket
        sends nothing: it only fixes the peer, so answers from anyone else are dropped)."""
        routed = self.routed(addresses)
        sock = self.open(routed[0].version, socket.SOCK_DGRAM)
        try:
            sock.connect((str(routed[0]), port))
        except OSError as error:
            sock.close()
            raise DialError(DIAL_ERRORS.get(error.errno or 0, Reply.GENERAL_FAILURE),
                            f"{routed[0]} port {port}: {error.strerror}") from None
        return sock

    def unconnected(self, version: int) -> socket.socket:
        """A datagram socket that sends wherever each datagram goes (SOCKS5 UDP ASSOCIATE),
        still only through the device; the caller checks every destination against the
        policy and `routes` first."""
        return self.open(version, socket.SOCK_DGRAM)

    def open(self, version: int,
             kind: socket.SocketKind = socket.SOCK_STREAM) -> socket.socket:
        family = socket.AF_INET if version == 4 else socket.AF_INET6
        try:
            sock = socket.socket(family, kind | socket.SOCK_NONBLOCK)
        except OSError as error:  # EMFILE and friends: the proxy's trouble, not the host's
            raise DialError(Reply.GENERAL_FAILURE, f"socket: {error.strerror}") from None
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.device)
            if kind == socket.SOCK_STREAM:
                tune(sock)
        except OSError as error:
            sock.close()
            raise DialError(DIAL_ERRORS.get(error.errno or 0, Reply.GENERAL_FAILURE),
                            f"{self.device.decode()}: {error.strerror}") from None
        return sock


class Attempt:
    """One dial, one address at a time, without waiting: whoever drives it (driven.py's
    `connect`, from loop callbacks) waits for the socket to turn writable, then says how
    the connect ended.

    The addresses are tried in order; the first one's error is the one the client hears
    when every one fails.
    """

    __slots__ = ("_dialer", "_first", "_left", "address", "port", "sock")

    def __init__(self, dialer: Dialer, addresses: Sequence[Address], port: int) -> None:
        self._dialer, self.port = dialer, port
        self._left = iter(dialer.routed(addresses))
        self._first: DialError | None = None
        self.sock: socket.socket | None = None
        self.address: Address | None = None

    @property
    def current(self) -> socket.socket:
        """The socket of the connect in flight, or the connected one."""
        assert self.sock is not None, "no connect in flight"
        return self.sock

    def next(self) -> bool:
        """Connect to the next address: True when connected at once, False when in flight
        (wait for writable, then call `ended`); DialError when no address is left."""
        for address in self._left:
            self.address = address
            sock = self.sock = self._dialer.open(address.version)
            error = sock.connect_ex((str(address), self.port))
            # Often the handshake is done by the time connect() returns (a peer close by):
            # then there is nothing to wait for.
            if error == errno.EINPROGRESS:
                if not _connected(sock):
                    return False
                error = 0
            if self.ended(error):
                return True
        assert self._first is not None
        raise self._first

    def ended(self, error: int) -> bool:
        """The connect in flight ended with `error` (0: connected); on a failure its socket
        is closed and the error kept, and `next` tries the next address."""
        if error == 0:
            return True
        self.abandon()
        self._first = self._first or DialError(
            DIAL_ERRORS.get(error, Reply.GENERAL_FAILURE),
            f"{self.address} port {self.port}: {os.strerror(error)}")
        return False

    def timed_out(self) -> DialError:
        """The dial timeout passed: the connect in flight is given up."""
        self.abandon()
        return DialError(Reply.TTL_EXPIRED, f"{self.address} port {self.port}: no answer "
                                            f"within {self._dialer.timeout:g} s")

    def abandon(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def connect_error(sock: socket.socket) -> int:
    """How a non-blocking connect ended, once its socket is writable (0: connected)."""
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)


def _connected(sock: socket.socket) -> bool:
    try:
        sock.getpeername()
    except OSError:
        return False
    return True


def tune(sock: socket.socket) -> None:
    """TCP_NODELAY (a relay must not hold small writes back for 40/200 ms) and keepalive.
    Accepted sockets inherit all of it from the listening socket."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPIDLE)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPINTVL)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPCNT)
