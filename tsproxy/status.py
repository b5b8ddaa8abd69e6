"""What `tsproxy status` reports for each instance, gathered from systemd, the instance's
tailscaled (LocalAPI status), the proxy's counters and a look at its network, and judged
healthy or not by health.py.

Reading needs no root: unit states, the LocalAPI's status and stats.json are open to every
user. Every tailscaled is asked at once, each for at most TIMEOUT seconds, so a wedged one
costs the whole command that long and no more.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from tsproxy_generator.model import TailnetConf
from tsproxy_generator.vocabulary import DNS_SERVICE, DNS_SOCKET, PROXY_STATS_DIR

from . import health, holders, network, systemd
from .health import units_of
from .instances import tailscaled_socket
from .localapi import LocalAPI, LocalAPIError, key_expiry, peer_counts

TIMEOUT = 3.0


def stats_dir() -> str:
    # Tests point this at a temporary directory; installed systems never set it.
    return os.environ.get("TSPROXY_STATS_DIR", PROXY_STATS_DIR)


@dataclass
class Status:
    name: str
    healthy: bool = False
    problem: str | None = None  # the first thing wrong, with what to do about it
    conf_error: str | None = None
    units: dict[str, str] = field(default_factory=dict)  # role -> ActiveState (SubState)
    backend_state: str | None = None
    tailnet: str | None = None
    ips: list[str] = field(default_factory=list)
    peers_online: int | None = None
    peers_total: int | None = None
    key_expiry: str | None = None  # RFC 3339 from tailscaled; None: never expires/unknown
    listen: str | None = None
    dns_listen: str | None = None
    connections: int | None = None  # open now, from stats.json
    connections_total: int | None = None
    bytes_up: int | None = None
    bytes_down: int | None = None
    health: list[str] = field(default_factory=list)  # tailscaled's own health warnings
    # What `up` made, while the instance runs: missing pieces the watchdog is about to repair.
    # The nft table can only be read by root: None for other users.
    netns: bool | None = None
    veth: bool | None = None
    nft_table: bool | None = None
    # The host's forwarding guard (forwarding.py), when tsproxy turned forwarding on.
    forwarding_guard: bool | None = None
    # What health.py judges, beside the above: not part of the JSON.
    states: dict[str, dict[str, str]] = field(default_factory=dict)  # role -> properties
    shape: network.Shape | None = None
    # Another process on the proxy's or the DNS responder's port, while tsproxy's socket
    # is down: restarting cannot help until it is stopped. Seen by root only.
    held: holders.Held | None = None
    dns_held: holders.Held | None = None

    def as_json(self) -> dict[str, Any]:
        shown = asdict(self)
        for private in ("states", "shape", "held", "dns_held"):
            del shown[private]
        # In JSON, who holds the port and how to stop it.
        shown["listen_held"], shown["dns_listen_held"] = _held(self.held), _held(self.dns_held)
        return shown


def gather(good: list[TailnetConf], bad: dict[str, str]) -> list[Status]:
    """Status of the good confs and of the bad ones (by name -> error), sorted by name."""
    names = sorted([conf.name for conf in good] + list(bad))
    if not names:
        return []
    shared = (DNS_SOCKET, DNS_SERVICE)
    states = systemd.show([unit_name for name in names for unit_name in units_of(name).values()
                           if unit_name not in shared] + list(shared))
    answers = asyncio.run(_ask_all([conf.name for conf in good]))
    by_name = {conf.name: conf for conf in good}
    return [judge(by_name[name], states, answers[name]) if name in by_name else
            _judged(_units(Status(name, conf_error=bad[name]), states),
                    [health.conf_finding(name, bad[name])]) for name in names]


def judge(conf: TailnetConf, states: dict[str, dict[str, str]],
          answer: dict[str, Any] | str, host: bool = True) -> Status:
    """A good conf's status, judged: from its units' properties (systemd.show's, by unit),
    tailscaled's status answer (or why there is none) and, with `host`, a look at the host's
    side of its network (namespace, veth, nft tables) and at who holds its ports. The proxy
    runs inside the tailnet's namespace and sees none of that: host=False leaves those
    checks out (its status page says so)."""
    status = _units(Status(conf.name), states)
    status.listen = str(conf.listen)
    status.dns_listen = str(conf.dns_listen) if conf.dns_listen else None
    _read_tailscaled(status, answer)
    _read_stats(status)
    if host:
        _read_network(status)
        _read_holders(status, conf)
    return _judged(status, [health.tailscaled_installed(), *health.instance(conf, status)])


def _units(status: Status, states: dict[str, dict[str, str]]) -> Status:
    status.states = {role: states[unit] for role, unit in units_of(status.name).items()}
    status.units = {role: _state(properties) for role, properties in status.states.items()}
    return status


def _judged(status: Status, findings: list[health.Finding]) -> Status:
    status.problem = health.first_problem(findings)
    status.healthy = status.problem is None
    return status


def _state(properties: dict[str, str]) -> str:
    active, sub = properties.get("ActiveState", "?"), properties.get("SubState", "?")
    if properties.get("LoadState") == "not-found":
        return "not-found"
    plain = (active, "exited", "running", "listening", "dead")
    return active if sub in plain else f"{active} ({sub})"


async def _ask_all(names: list[str]) -> dict[str, dict[str, Any] | str]:
    async def ask(name: str) -> dict[str, Any] | str:
        api = LocalAPI(tailscaled_socket(name), timeout=TIMEOUT)
        try:
            return await api.status()
        except LocalAPIError as error:
            return str(error)

    answers = await asyncio.gather(*(ask(name) for name in names))
    return dict(zip(names, answers, strict=True))


def _read_tailscaled(status: Status, answer: dict[str, Any] | str) -> None:
    if isinstance(answer, str):
        status.health = [answer]
        return
    status.backend_state = str(answer.get("BackendState") or "?")
    tailnet = answer.get("CurrentTailnet") or {}
    status.tailnet = tailnet.get("Name") or answer.get("MagicDNSSuffix") or None
    status.ips = [str(ip) for ip in answer.get("TailscaleIPs") or []]
    status.peers_total, status.peers_online = peer_counts(answer)
    status.key_expiry = key_expiry(answer)
    status.health = [str(line) for line in answer.get("Health") or []]


def _read_stats(status: Status) -> None:
    # Present only while the proxy runs (its RuntimeDirectory); absent is no error.
    try:
        with open(os.path.join(stats_dir(), status.name, "stats.json"), encoding="utf-8") as file:
            stats = json.load(file)
    except (OSError, ValueError):
        return
    if isinstance(stats, dict):
        status.connections = _int(stats.get("active"))
        status.connections_total = _int(stats.get("total"))
        status.bytes_up = _int(stats.get("bytes_up"))
        status.bytes_down = _int(stats.get("bytes_down"))


def can_read_nft() -> bool:
    return os.geteuid() == 0  # listing nftables needs CAP_NET_ADMIN


def _read_network(status: Status) -> None:
    shape = status.shape = network.look(status.name, with_table=can_read_nft())
    status.netns, status.veth = shape.netns is not None, shape.veth
    if can_read_nft():
        status.nft_table = network.whole(shape.table)
        if shape.guard_due:
            status.forwarding_guard = network.whole(shape.guard)


def _read_holders(status: Status, conf: TailnetConf) -> None:
    """Another process on a port whose socket unit is down: restarting cannot help until
    it is stopped."""
    if status.units["proxy_socket"] != "active":
        status.held = holders.held(conf.listen)
    if conf.dns_listen and status.units["dns_socket"] != "active":
        status.dns_held = holders.held(conf.dns_listen, ("udp", "tcp"))


def _held(held: holders.Held | None) -> str | None:
    return f"{held}: {held.stop}" if held else None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
