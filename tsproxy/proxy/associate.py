"""SOCKS5 UDP ASSOCIATE (RFC 1928 section 7): datagrams relayed for a client that asked over
a SOCKS5 connection, each to where its header says.

The client-facing socket is one datagram socket on the proxy's own address and port (the
same socket unit, ListenDatagram=), so the reply's BND.ADDR:BND.PORT is the address the
client's connection arrived on. Only a connection that passed everything a CONNECT must
(the caps, allow_clients, allow_identities, the login) gets an association: this is no
open relay.

- An association takes datagrams only from its client: the address its connection comes
  from and, when the request named one, that port; otherwise the first datagram from that
  address fixes the port (RFC 1928 lets the client send 0.0.0.0:0 when it cannot know).
  Datagrams from anyone else are dropped and counted.
- Each datagram is judged alone, as a connection is: its name resolved (without a wait when
  the name needs no daemon; else at most PENDING_MAX of an association's datagrams wait for
  an answer, others going on meanwhile), the address held to the egress policy and to the
  routes through tailscale0. A refused datagram is dropped and counted, and the
  association's log says why once per kind of refusal, not once per datagram.
- It sends from sockets of its own inside the namespace, one per IP version, bound to
  tailscale0 and unconnected. Answers are taken only from the address:port pairs it has
  sent to (at most PEERS_MAX of them), so the rest of the tailnet cannot reach the client
  through the port it sends from; each goes back with the header naming where it came from.
- It ends with its connection: when the client closes it, after IDLE_TIMEOUT seconds
  without a datagram either way (the proxy then closes the connection), or at once when
  the proxy stops. The connection's log line then counts the datagrams' bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

from tsproxy_generator.addresses import Address, ip_literal, unmapped

from ..names import NameNotFound, ResolveError, Resolver
from ..proto.socks5_udp import DatagramError, datagram_header, parse_datagram
from .access import client_host
from .datagrams import IDLE_TIMEOUT, PENDING_MAX, Association, DatagramRelay
from .egress import Dialer, DialError, Policy
from .relay import CLOSED, IDLE
from .stats import Log, Record, Stats

PEERS_MAX = 256
CONTROL_READ = 4096
SHUTDOWN = "shutdown"


class UdpAssociation(Association):
    __slots__ = ("control", "done", "peers", "pending", "told", "upstreams")

    def __init__(self, client: tuple[str, int], host: str, record: Record, now: float,
                 control: socket.socket, done: asyncio.Future[tuple[str, str]]) -> None:
        super().__init__(client, host, record, now)
        self.control, self.done = control, done
        self.upstreams: dict[int, socket.socket] = {}  # by IP version
        self.peers: set[tuple[str, int]] = set()
        self.pending = 0  # datagrams waiting for a name
        self.told: set[str] = set()  # kinds of refusal already in the log

    def finish(self, kind: str, outcome: str) -> None:
        if not self.done.done():
            self.done.set_result((kind, outcome))


class UdpAssociate(DatagramRelay):
    """The proxy port's datagram socket and the associations of its SOCKS5 connections."""

    def __init__(self, sock: socket.socket, *, resolver: Resolver, dialer: Dialer,
                 policy: Policy, stats: Stats, log: Log,
                 idle_timeout: float = IDLE_TIMEOUT) -> None:
        super().__init__(sock, stats, log, idle_timeout)
        self.resolver, self.dialer, self.policy = resolver, dialer, policy
        self._fixed: dict[tuple[str, int], UdpAssociation] = {}  # by (client host, port)
        self._unfixed: dict[str, list[UdpAssociation]] = {}  # port not known yet, by host

    async def hold(self, control: socket.socket, host: str, port: int, record: Record,
                   reply: bytes) -> None:
        """Send `reply` (the request's success) on the connection, then relay for its client
        until the association ends; `record` ends saying how."""
        loop = self.loop
        association = UdpAssociation((host, port), host, record, loop.time(), control,
                                     loop.create_future())
        if port:
            self._fixed[(host, port)] = association
        else:
            self._unfixed.setdefault(host, []).append(association)
        try:
            await loop.sock_sendall(control, reply)
            if self.stopped:
                association.finish(SHUTDOWN, "proxy shutting down")
            loop.add_reader(control.fileno(), self._control, association)
            kind, outcome = await association.done
            record.end(kind, outcome)
        except OSError as error:
            record.end("relay error", f"{error.strerror} before relaying")
        finally:
            self._close(association)

    def _control(self, association: UdpAssociation) -> None:
        try:
            data = association.control.recv(CONTROL_READ)
        except BlockingIOError:
            return
        except OSError as error:
            association.finish("reset", f"connection: {error.strerror}")
            return
        if not data:
            association.finish(CLOSED, CLOSED)
        # RFC 1928 gives the connection nothing more to carry: whatever comes is dropped.

    def _close(self, association: UdpAssociation) -> None:
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_reader(association.control.fileno())
        key = (association.host, association.client[1])
        if self._fixed.get(key) is association:
            del self._fixed[key]
        waiting = self._unfixed.get(association.host, [])
        if association in waiting:
            waiting.remove(association)
            if not waiting:
                del self._unfixed[association.host]
        for upstream in association.upstreams.values():
            self._unwatch(upstream)
        association.upstreams.clear()

    def _live(self) -> list[UdpAssociation]:
        return [*self._fixed.values(), *(a for w in self._unfixed.values() for a in w)]

    def _expire(self, association: Association) -> None:
        assert isinstance(association, UdpAssociation)
        association.finish(IDLE, f"idle {self.idle_timeout:g} s")

    def _end(self, association: Association) -> None:
        assert isinstance(association, UdpAssociation)
        association.finish(SHUTDOWN, "proxy shutting down")

    # -- from clients ------------------------------------------------------------------------

    def _from_client(self, data: bytes, client: tuple[str, int]) -> None:
        host = client_host(client[0])
        association = self._fixed.get((host, client[1])) or self._fix(host, client)
        if association is None:
            self._count("stranger")  # no log line: anyone can send these
            return
        association.client = client  # as the socket names it, for the answers
        association.last = self.loop.time()
        try:
            datagram = parse_datagram(data)
        except DatagramError as error:
            self._drop(association, error.kind, error.reason)
            return
        literal = ip_literal(datagram.host)
        try:
            # A literal or A.B.C.D.SUFFIX needs no daemon, and no wait.
            addresses = [literal] if literal else self.resolver.resolve_now(datagram.host)
        except NameNotFound as error:
            self._drop(association, "name", str(error))
            return
        if addresses is not None:
            self._send_up(association, addresses, datagram.port, datagram.data)
        elif association.pending < PENDING_MAX:
            association.pending += 1
            self._spawn(self._resolve(association, datagram.host, datagram.port,
                                      datagram.data))
        else:
            self._drop(association, "queue", f"more than {PENDING_MAX} datagrams waiting "
                                             "for names")

    def _fix(self, host: str, client: tuple[str, int]) -> UdpAssociation | None:
        """The oldest association of `host` that waits for its port: it has it now."""
        waiting = self._unfixed.get(host)
        if not waiting:
            return None
        association = waiting.pop(0)
        if not waiting:
            del self._unfixed[host]
        association.client = client
        self._fixed[(host, client[1])] = association
        return association

    async def _resolve(self, association: UdpAssociation, host: str, port: int,
                       data: bytes) -> None:
        try:
            addresses = await self.resolver.resolve(host)
        except (NameNotFound, ResolveError) as error:
            self._drop(association, "name", str(error))
            return
        finally:
            association.pending -= 1
        if not association.done.done():
            self._send_up(association, addresses, port, data)

    def _send_up(self, association: UdpAssociation, addresses: list[Address], port: int,
                 data: bytes) -> None:
        addresses = [unmapped(address) for address in addresses]
        allowed = self.policy.allowed(addresses)
        if not allowed:
            self._drop(association, "egress", self.policy.refusal(addresses))
            return
        routed = [address for address in allowed if self.dialer.routes.covers(address)]
        if not routed:
            self._drop(association, "unreachable", self.dialer.unrouted(allowed[0]))
            return
        address = routed[0]
        upstream = association.upstreams.get(address.version)
        if upstream is None:
            try:
                upstream = self.dialer.unconnected(address.version)
            except DialError as error:
                self._drop(association, "socket", error.reason)
                return
            association.upstreams[address.version] = upstream
            self._watch(upstream, association)
        peer = (str(address), port)
        if len(association.peers) < PEERS_MAX:
            association.peers.add(peer)
        with contextlib.suppress(OSError):  # a full buffer, or an ICMP error queued
            upstream.sendto(data, peer)
            association.record.up += len(data)

    # -- from the tailnet --------------------------------------------------------------------

    def _answer(self, association: Association, data: bytes, source: tuple[str, int]) -> None:
        assert isinstance(association, UdpAssociation)
        host, port = source
        if (host.partition("%")[0], port) not in association.peers:
            self._count("unsolicited")
            return
        self._to_client(association, data, datagram_header(host, port))

    # -- refusals ----------------------------------------------------------------------------

    def _count(self, kind: str) -> None:
        dropped = self.stats.datagrams_dropped
        dropped[kind] = dropped.get(kind, 0) + 1
        self.stats.changes += 1

    def _drop(self, association: UdpAssociation, kind: str, reason: str) -> None:
        """Count a refused datagram; the first of each kind in an association is logged."""
        self._count(kind)
        if kind not in association.told:
            association.told.add(kind)
            self.log(f"client={association.record.client} socks5 udp: datagram dropped "
                     f"({kind}): {reason} (said once per association)")
