"""The conf model's types: a validated, frozen TailnetConf, its Listen addresses, and
ConfigError, the one line a bad conf prints. The runtime imports these; on the boot path:
standard library only.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from .addresses import Address, Network, endpoint
from .vocabulary import netns_name


class ConfigError(Exception):
    """One problem in one conf: prints as `PATH: KEY: MESSAGE`. `more` holds the conf's
    other problems, so one run can name them all (`problems`)."""

    def __init__(self, path: str, key: str | None, message: str,
                 more: Iterable[ConfigError] = ()) -> None:
        super().__init__(path, key, message)
        self.path, self.key, self.message = path, key, message
        self.more = tuple(more)

    @property
    def problems(self) -> list[ConfigError]:
        return [self, *self.more]

    def __str__(self) -> str:
        where = f"{self.path}: {self.key}" if self.key else self.path
        return f"{where}: {self.message}"


@dataclass(frozen=True)
class Listen:
    address: Address
    port: int

    def __str__(self) -> str:
        return endpoint(self.address, self.port)


@dataclass(frozen=True)
class Forward:
    """`forward = PORT[/tcp|/udp]=HOST:PORT`: the port on the conf's listen address, and the
    target it reaches inside the tailnet (HOST a name, resolved at connect time, or an IP)."""

    port: int
    protocol: str  # "tcp" or "udp"
    host: str
    target_port: int

    @property
    def target(self) -> str:
        return endpoint(self.host, self.target_port)

    def __str__(self) -> str:
        return f"{self.port}/{self.protocol}={self.target}"


@dataclass(frozen=True)
class TailnetConf:
    name: str
    path: str
    listen: Listen
    suffix: str
    autostart: bool
    authkey_file: str | None
    login_server: str | None
    accept_routes: bool
    hostname: str
    veth_subnet: ipaddress.IPv4Network
    tailscaled_args: tuple[str, ...]
    allow_clients: tuple[Network, ...]
    users_file: str | None
    allow_identities: tuple[str, ...]
    identity_socket: str
    allow_egress: tuple[Network, ...]
    max_connections: int
    max_connections_per_client: int
    # None: this tailnet's names are not served by the DNS responder.
    dns_listen: Listen | None
    dns_domains: tuple[str, ...]
    forwards: tuple[Forward, ...] = ()

    @property
    def netns(self) -> str:
        return netns_name(self.name)

    @property
    def veth_host(self) -> ipaddress.IPv4Interface:
        return ipaddress.IPv4Interface(f"{self.veth_subnet[1]}/30")

    @property
    def veth_ns(self) -> ipaddress.IPv4Interface:
        return ipaddress.IPv4Interface(f"{self.veth_subnet[2]}/30")
