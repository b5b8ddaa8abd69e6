"""A running proxy takes a changed conf (SIGHUP, from `systemctl reload tsproxy@NAME`): new
connections get the new client checks, egress policy, caps and forward targets; connections
already open keep going as they are.

Some keys cannot change under a running instance: where it listens and which sockets it has
(listen, a forward's port, dns_listen), the names it answers (suffix), its veth, and how its
tailscaled runs. A conf that changes any of them is not applied at all, rather than half-way:
one line names the keys and the restart that takes them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import fields

from tsproxy_generator.model import TailnetConf

from ..errors import TsproxyError
from ..localapi import LocalAPI
from .access import ClientNetworks, Identities, Users
from .datagrams import DatagramRelay, UdpForward
from .egress import Policy
from .server import Server
from .stats import log_line, write_json

# Conf keys (TailnetConf fields) that only a restart of the instance applies.
RESTART_KEYS = frozenset({"listen", "suffix", "veth_subnet", "dns_listen", "tailscaled_args",
                          "hostname", "login_server", "accept_routes", "authkey_file"})
IGNORED = frozenset({"name", "path", "autostart", "dns_domains"})  # not the proxy's business


def changes(old: TailnetConf, new: TailnetConf) -> tuple[list[str], list[str]]:
    """The conf keys that differ: (applied live, needing a restart). A forward's target may
    change live; a forward added or taken away changes the instance's sockets."""
    live: list[str] = []
    restart: list[str] = []
    for field in fields(TailnetConf):
        key = field.name
        if key in IGNORED or getattr(old, key) == getattr(new, key):
            continue
        if key == "forwards":
            ports = {(f.port, f.protocol) for f in old.forwards}
            (live if ports == {(f.port, f.protocol) for f in new.forwards} else restart
             ).append("forward")
        else:
            (restart if key in RESTART_KEYS else live).append(key)
    return live, restart


def apply(new: TailnetConf, server: Server, relays: Sequence[DatagramRelay]) -> None:
    """Every live key of `new`, for the connections and datagrams that come next. A users
    file that cannot be read raises TsproxyError before anything changed."""
    users = Users.load(new.users_file) if new.users_file else None
    identities = server.identities
    if identities is None or identities.allowed != frozenset(new.allow_identities) or \
            identities.api.socket_path != new.identity_socket:
        identities = (Identities(new.allow_identities, LocalAPI(new.identity_socket))
                      if new.allow_identities else None)
    networks = ClientNetworks(new.allow_clients)
    policy = Policy(new.veth_subnet, new.allow_egress)
    server.users = users
    server.networks, server.identities, server.policy = networks, identities, policy
    if server.udp is not None:  # ASSOCIATE's clients are judged by the server itself
        server.udp.policy = policy
    # The caps count what is open: the same counters, new limits.
    server.caps.total_max = new.max_connections
    server.caps.per_client_max = new.max_connections_per_client
    targets = {(f.port, f.protocol): f for f in new.forwards}
    server.forwards = {fd: targets[(forward.port, forward.protocol)]
                       for fd, forward in server.forwards.items()}
    for relay in relays:
        if isinstance(relay, UdpForward):
            relay.networks, relay.identities, relay.policy = networks, identities, policy
            relay.forward = targets[(relay.forward.port, relay.forward.protocol)]


class Reloader:
    """The SIGHUP handler: the conf read again (`reread`) and applied, or kept with one line
    saying why. The verdict also goes to `verdict_path` (beside stats.json), where
    `tsproxy reload NAME` waits for it."""

    def __init__(self, conf: TailnetConf, reread: Callable[[], TailnetConf], server: Server,
                 relays: Sequence[DatagramRelay], verdict_path: str | None) -> None:
        self.conf, self.reread, self.server, self.relays = conf, reread, server, relays
        self.verdict_path = verdict_path

    def __call__(self) -> None:
        applied, line = self._reload()
        log_line(f"{self.conf.name}: {line}")
        if self.verdict_path is not None:
            try:
                write_json(self.verdict_path, {"at": time.time(), "applied": applied,
                                               "line": line})
            except OSError as error:
                log_line(f"{self.conf.name}: cannot write {self.verdict_path}: {error.strerror}")

    def _reload(self) -> tuple[bool, str]:
        try:
            new = self.reread()
        except TsproxyError as error:
            return False, f"conf not reloaded, keeping the old one: {error}"
        live, restart = changes(self.conf, new)
        if restart:
            return False, (f"conf not reloaded: {', '.join(restart)} changed, which takes "
                           f"systemctl restart tsproxy@{new.name}; nothing else was applied")
        try:
            apply(new, self.server, self.relays)
        except TsproxyError as error:
            return False, f"users file not reloaded, keeping the old one: {error}"
        self.conf = new
        done = f"conf reloaded: {', '.join(live) or 'nothing'} changed"
        if self.server.users is not None:
            done += f"; users file reloaded: {len(self.server.users)} logins"
        return True, done
