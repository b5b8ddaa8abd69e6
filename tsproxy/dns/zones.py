"""Which tailnet answers a name: one Zone per conf, for its suffix and its dns_domains.

A zone answers with that tailnet's Resolver (names.py), the one the proxy uses too, so a name
means the same address to `dig` and to `curl -x socks5h://`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from tsproxy_generator.model import TailnetConf

from ..instances import tailscaled_socket
from ..localapi import LocalAPI
from ..names import OCTET, Resolver
from .protocol import soa_record


def empty_non_terminal(relative: list[str]) -> bool:
    """Whether labels under an apex are the tail of IP-embedded names (``141``, ``10.141``):
    such a name has no address but names below it, so it is NODATA, not NXDOMAIN (RFC 8020
    lets a resolver take NXDOMAIN to mean nothing below exists either)."""
    return len(relative) < 4 and all(OCTET.fullmatch(label) for label in relative)


@dataclass(frozen=True)
class Apex:
    """One name a tailnet answers under: its suffix or one of its dns_domains."""
    name: str
    zone: Zone
    # The SOA record for negative answers, owner and all, ready to append (RFC 2308 3).
    soa: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "soa", soa_record(self.name))


@dataclass(frozen=True)
class Zone:
    """One tailnet's names: `suffix` (IP-embedded names and peers) and `domains` (names its
    own DNS serves, asked through its tailscaled)."""
    name: str
    suffix: str
    domains: tuple[str, ...]
    resolver: Resolver = field(compare=False)


class Zones:
    """Every zone, looked up by the longest apex a name ends with."""

    def __init__(self, zones: Iterable[Zone]) -> None:
        self.zones = list(zones)
        self.apexes = {apex: Apex(apex, zone) for zone in self.zones
                       for apex in (zone.suffix, *zone.domains)}

    @classmethod
    def from_confs(cls, confs: Iterable[TailnetConf], run_dir: str | None = None) -> Zones:
        """Zones for the confs that serve DNS, each asking its own tailscaled's LocalAPI
        (reachable from the host namespace; `run_dir` as for instances.tailscaled_socket)."""
        return cls(Zone(conf.name, conf.suffix, conf.dns_domains,
                        Resolver(conf.suffix, LocalAPI(tailscaled_socket(conf.name, run_dir))))
                   for conf in confs if conf.dns_listen)

    def find(self, name: str) -> Apex | None:
        """The apex ``name`` (lower case, no trailing dot) is at or under, if any."""
        while True:
            if (apex := self.apexes.get(name)) is not None:
                return apex
            dot = name.find(".")
            if dot < 0:
                return None
            name = name[dot + 1:]
