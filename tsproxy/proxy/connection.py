"""One proxied connection, driven by loop callbacks: a Task only while it must await something.

Why it is shaped so: on a small machine the proxy's CPU time per connection bounds the new
connections per second, and a Task per connection (its coroutine, a future and two epoll
changes for every sock_recv, an asyncio.timeout) was a good part of it. So the common path
is a handful of callbacks, each step calling the next:

    start       admission, then access (client networks, caps; identities await tailscaled)
    _handshake  the first bytes are read at once (a client's greeting is usually there by
                the time it is accepted), else `readable` waits for more; the sans-I/O
                parser's answers are sent as they come, until the request is whole
    _request    names (IP literals, A.B.C.D.SUFFIX and peers of a fresh status need no
                daemon; others await tailscaled), then the egress policy
    _dial       a non-blocking connect per address (driven.py's `connect`), a writer
                watching the one in flight, under the dial timeout
    _dialed     the reply and any pipelined bytes, then the splice Tunnel, whose end
                (`_relayed`) ends the connection

What has to wait on something else (an identity, a name, a PAC or /metrics text, a UDP
association, a dial function that is only a coroutine, as the unit tests inject) runs in a
Task for that connection and that step only (driven.py's `wait`). Whatever path it took, a
connection ends in `_finish`: exactly one log line and one counter (stats.Record), the caps
released, every registration and socket gone. At shutdown the server ends the ones driven
by callbacks (`stop`); a waiting one's Task is cancelled by the server's TaskGroup and ends
the same way, "proxy shutting down".
"""

from __future__ import annotations

import asyncio
import socket
import traceback
from http import HTTPStatus
from typing import TYPE_CHECKING

from tsproxy_generator.addresses import Address, endpoint, ip_literal
from tsproxy_generator.model import Forward

from ..names import NameNotFound, ResolveError
from ..proto import (
    AssociateRequest,
    ConnectRequest,
    HttpConnectHandshake,
    LocalRequest,
    ProtocolError,
    Reply,
    Socks5Handshake,
    sniff,
)
from ..proto.forward import ForwardHandshake
from . import limits, resources
from .access import Identity, client_host
from .driven import SHUTDOWN, Driven, callback
from .egress import DialError
from .relay import CLOSED, IDLE, Tunnel
from .stats import Record

if TYPE_CHECKING:
    from .server import Server

RECV_SIZE = 16 * 1024  # a handshake is far smaller; more would just be payload

Handshake = Socks5Handshake | HttpConnectHandshake | ForwardHandshake
# (SOCKS reply, HTTP status when not the reply's own, counter, reason for the log)
Refusal = tuple[Reply, HTTPStatus | None, str, str]


class Connection(Driven):
    __slots__ = ("_done", "denied", "dialing", "forward", "host", "hs", "over_cap",
                 "record", "server", "tunnel", "upstream")

    def __init__(self, server: Server, sock: socket.socket, peer: tuple[str, int],
                 forward: Forward | None) -> None:
        super().__init__(server.loop, sock)
        self.server, self.forward = server, forward
        self.host = client_host(peer[0])
        self.record = Record(endpoint(self.host, peer[1]), self.loop.time())
        self.over_cap: str | None = None
        self.hs: Handshake | None = None
        self.denied: Refusal | None = None  # decided before the handshake, told after it
        self.tunnel: Tunnel | None = None
        self.upstream: socket.socket | None = None
        self.dialing = 0.0
        self._done = False

    # -- admission, access, handshake ---------------------------------------------------------

    def start(self) -> bool:
        """Admit the connection; False when it was dropped (over the caps with too many
        refusals in progress already): then nothing is logged but the server's summary."""
        server = self.server
        self.over_cap = server.caps.admit(self.host)
        if self.over_cap is not None and not server.caps.start_refusal():
            return False
        server.stats.opened()
        server.connections.add(self)
        self._begin()
        return True

    @callback
    def _begin(self) -> None:
        self.sock.setblocking(False)
        # Access is decided before the handshake, so a refused client is never asked for a
        # password: a login answer would tell it whether the password was right.
        denied = self._refusal()
        if denied is None and self.server.identities is not None:
            self.wait(self.server.identities.check(self.host), self._identified)
            return
        self._handshake(denied)

    def _identified(self, identity: Identity) -> None:
        self.record.identity = identity.name
        self._handshake(None if identity.allowed else
                        (Reply.NOT_ALLOWED, None, "identity", identity.reason))

    def _handshake(self, denied: Refusal | None) -> None:
        self.denied = denied
        if self.forward is not None:
            self.record.protocol = "forward"
            self.hs = ForwardHandshake(self.forward)
            self._request()
            return
        timeout = self.server.handshake_timeout
        self.timer = self.loop.call_later(timeout, self._timed_out, timeout)
        self.readable()

    @callback
    def readable(self) -> None:
        try:
            data = self.sock.recv(RECV_SIZE)
        except BlockingIOError:
            self.read_on()
            return
        except OSError as error:
            self.end("refused: bad handshake", f"bad handshake: {error.strerror} mid-handshake")
            return
        hs = self.hs
        if hs is None:
            if not data:
                self.end("refused: bad handshake", "bad handshake: closed before sending "
                                                    "anything")
                return
            protocol = sniff(data[0])
            if protocol is None:
                self.end("refused: bad handshake", f"bad handshake: not SOCKS5 or HTTP "
                                                    f"(first byte 0x{data[0]:02x})")
                return
            self.record.protocol = protocol
            # An empty users file still means "log in": then nobody can.
            users = self.server.users
            authenticate = users.authenticate if users is not None and not self.denied else None
            hs = self.hs = (Socks5Handshake(authenticate) if protocol == "socks5"
                            else HttpConnectHandshake(authenticate))
        assert not isinstance(hs, ForwardHandshake)  # a forward reads nothing
        try:
            out = hs.receive_data(data)
        except ProtocolError as error:
            self.send_now(self.sock, error.reply)
            kind = error.kind.value
            self.end(f"refused: {kind}", f"{kind}: {error.reason}")
            return
        self.send(self.sock, out, self._answered)

    def _answered(self, error: OSError | None) -> None:
        if error is not None:
            self.end("refused: bad handshake", f"bad handshake: {error.strerror} mid-handshake")
        elif self.hs is not None and self.hs.event is not None:
            # The reader stays: a request served at once hands it to the Tunnel, which only
            # swaps the callback (no epoll call); any step that returns to the loop first
            # drops it (driven.py).
            self.cancel_timer()
            self.server.stats.handshakes.observe(self.loop.time() - self.record.started)
            self._request()
        else:
            self.read_on()

    @callback
    def _timed_out(self, timeout: float) -> None:
        self.end("refused: handshake timeout",
                  f"handshake timeout: not complete within {timeout:g} s")

    def _refusal(self) -> Refusal | None:
        """Why the caps or allow_clients refuse this client, if they do."""
        if self.over_cap is not None:
            code = Reply.GENERAL_FAILURE if self.over_cap == limits.GLOBAL else Reply.NOT_ALLOWED
            return (code, HTTPStatus.SERVICE_UNAVAILABLE, "caps", self.over_cap)
        if not self.server.networks.allows(self.host):
            return (Reply.NOT_ALLOWED, None, "client", "client address not in allow_clients")
        return None

    # -- the request: names, egress, dial -----------------------------------------------------

    def _request(self) -> None:
        assert self.hs is not None
        request, record = self.hs.event, self.record
        if isinstance(request, LocalRequest):
            self._local(request)
            return
        assert request is not None
        record.user = request.user
        if isinstance(request, AssociateRequest):
            record.command = "udp"  # its address is where the client sends from, no target
        else:
            record.target = endpoint(request.host, request.port)
        if self.denied is not None:
            code, status, kind, reason = self.denied
            self._refuse(code, kind, reason, status)
        elif isinstance(request, AssociateRequest):
            self._associate(request.port)
        elif literal := ip_literal(request.host):
            self._resolved([literal])
        else:
            resolver = self.server.resolver
            try:
                # A.B.C.D.SUFFIX and peers in a fresh status need no daemon, and no await.
                addresses = resolver.resolve_now(request.host) or resolver.peer_now(request.host)
            except ResolveError as error:
                self._resolved(error)
                return
            if addresses:
                self._resolved(addresses)
            else:
                self.wait(resolver.resolve(request.host), self._resolved, ResolveError)

    def _resolved(self, addresses: list[Address] | ResolveError) -> None:
        if isinstance(addresses, ResolveError):
            code = (Reply.HOST_UNREACHABLE if isinstance(addresses, NameNotFound)
                    else Reply.GENERAL_FAILURE)
            self._refuse(code, "name", str(addresses))
            return
        policy = self.server.policy
        allowed = policy.allowed(addresses)
        if not allowed:
            self._refuse(Reply.NOT_ALLOWED, "egress", policy.refusal(addresses))
            return
        assert self.hs is not None and isinstance(self.hs.event, ConnectRequest)
        self._dial(allowed, self.hs.event.port)

    def _dial(self, addresses: list[Address], port: int) -> None:
        self.dialing = self.loop.time()
        server = self.server
        if server.dialer is not None:
            self.connect(server.dialer, addresses, port, self._dialed)
        else:  # a dial function of the tests' own: await it
            assert server.dial is not None
            self.wait(server.dial(addresses, port), self._dialed, DialError)

    def _dialed(self, result: socket.socket | DialError) -> None:
        self.server.stats.dials.observe(self.loop.time() - self.dialing)
        if isinstance(result, DialError):
            self._refuse(result.reply, result.kind, f"dial failed: {result.reason}")
            return
        self.upstream = result
        try:
            bound = result.getsockname()
            self.record.address = endpoint(*result.getpeername()[:2])
        except OSError as error:
            self._relay_failed(error)
            return
        assert self.hs is not None
        self.send(self.sock, self.hs.reply(Reply.SUCCEEDED, bound[:2]), self._replied)

    # -- the relay ----------------------------------------------------------------------------

    def _replied(self, error: OSError | None) -> None:
        assert self.hs is not None and self.upstream is not None
        if error is not None:
            self._relay_failed(error)
        elif leftover := self.hs.leftover:  # pipelined by the client right behind its request
            self.record.up += len(leftover)
            self.send(self.upstream, leftover, self._relay)
        else:
            self._relay(None)

    def _relay(self, error: OSError | None) -> None:
        assert self.upstream is not None
        if error is not None:
            self._relay_failed(error)
            return
        server = self.server
        self.reading = False  # the Tunnel's reader takes the client's registration over
        self.tunnel = Tunnel(self.loop, self.sock, self.upstream, server.pool,
                             server.idle_timeout)
        server.stats.tunnels += 1
        self.tunnel.start().add_done_callback(self._relayed)

    @callback
    def _relayed(self, done: asyncio.Future[str]) -> None:
        outcome = done.result()
        self.end(outcome if outcome in (CLOSED, IDLE) else "relay error", outcome)

    def _relay_failed(self, error: OSError) -> None:
        self.end("relay error", f"{error.strerror} before relaying")

    # -- what waits on something else --------------------------------------------------------

    def _local(self, request: LocalRequest) -> None:
        what = f"{request.method} {request.path}"
        if self.denied is not None:
            code, status, kind, reason = self.denied
            self._refuse(code, kind, f"{what}: {reason}", status)
            return
        self.wait(resources.answer(self.server.local, request, self.sock), self._answer)

    def _answer(self, answer: tuple[bytes, str, str]) -> None:
        reply, kind, outcome = answer
        assert self.hs is not None and isinstance(self.hs.event, LocalRequest)
        request = self.hs.event

        def sent(error: OSError | None) -> None:
            if error is not None:
                self.end(f"{resources.NAMES[request.path]} error",
                          f"{request.method} {request.path}: {error.strerror} while answering")
            else:
                self.record.down = len(reply)
                self.end(kind, outcome)
        self.send(self.sock, reply, sent)

    def _associate(self, port: int) -> None:
        udp = self.server.udp
        if udp is None:  # a socket unit from before UDP ASSOCIATE
            self._refuse(Reply.COMMAND_NOT_SUPPORTED, "udp",
                         "UDP ASSOCIATE: no datagram socket on the proxy's port")
            return
        assert self.hs is not None
        local = self.sock.getsockname()  # the datagram socket has the same address and port
        reply = self.hs.reply(Reply.SUCCEEDED, (client_host(local[0]), local[1]))
        # The association ends the record itself.
        self.wait(udp.hold(self.sock, self.host, port, self.record, reply),
                   lambda _: self._finish())

    # -- replies and refusals ----------------------------------------------------------------

    def _refuse(self, code: Reply, kind: str, reason: str,
                status: HTTPStatus | None = None) -> None:
        """The final reply saying why not, then the end (a client already gone still gets
        its log line saying why)."""
        assert self.hs is not None
        reply, answer = self.hs.refusal(code, status)
        self.send(self.sock, reply,
                   lambda _: self.end(f"refused: {kind}", f"refused ({answer}): {reason}"))

    # -- the end ------------------------------------------------------------------------------

    def group(self) -> asyncio.TaskGroup | None:
        return self.server.group

    def stop(self) -> None:
        """The server is stopping: end now, unless a Task is waiting (the server's TaskGroup
        cancels it, and that ends the connection the same way)."""
        if self.task is None:
            self.end("shutdown", SHUTDOWN)

    def end(self, kind: str, outcome: str) -> None:
        if not self._done:
            self.record.end(kind, outcome)
            self._finish()

    def crashed(self, error: Exception) -> None:
        self.record.end("error", f"internal error: {error!r}")
        self.server.log("".join(traceback.format_exception(error)).rstrip())
        self._finish()

    def _finish(self) -> None:
        if self._done:
            return
        self._done = True
        server, record = self.server, self.record
        self.unregister()
        if (tunnel := self.tunnel) is not None:
            tunnel.close(SHUTDOWN)  # nothing if it ended by itself
            server.stats.tunnels -= 1
            record.up += tunnel.bytes_up
            record.down += tunnel.bytes_down
        if self.upstream is not None:
            self.upstream.close()
        self.sock.close()
        if self.over_cap is None:
            server.caps.release(self.host)
        else:
            server.caps.end_refusal()
        server.connections.discard(self)
        server.stats.closed(record)
        server.log(record.line(self.loop.time()))

