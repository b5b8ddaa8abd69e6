"""Rules across confs: two tailnets never share a listen port (the proxy's, a forward's), a
DNS name or a veth subnet.
On the boot path: standard library only.
"""

from __future__ import annotations

import ipaddress
import os

from .model import ConfigError, Listen, TailnetConf


class Claims:
    """What the confs so far hold, in dicts so 100 confs cost no more than 100 reads.
    Every veth subnet is a /30, so two overlap exactly when they are equal."""

    def __init__(self) -> None:
        self.proxy_ports: dict[int, list[tuple[Listen, TailnetConf]]] = {}
        self.dns_ports: dict[int, list[tuple[Listen, TailnetConf]]] = {}
        # DNS names a tailnet answers for (its suffix, its dns_domains), and every parent
        # of those: a name inside another tailnet's name would make "which tailnet?" a guess.
        self.names: dict[str, TailnetConf] = {}
        self.parents: dict[str, tuple[str, TailnetConf]] = {}
        self.subnets: dict[ipaddress.IPv4Network, TailnetConf] = {}

    def take(self, conf: TailnetConf) -> None:
        if other := (_clash(conf.listen, self.proxy_ports)
                     or _clash(conf.listen, self.dns_ports)):
            raise ConfigError(conf.path, "listen", f'"{conf.listen}" {_used_by(other)}')
        if conf.dns_listen and (other := (_clash(conf.dns_listen, self.proxy_ports) or
                                          _clash(conf.dns_listen, self.dns_ports, share=True))):
            raise ConfigError(conf.path, "dns_listen", f'"{conf.dns_listen}" {_used_by(other)}')
        for key, name in [("suffix", conf.suffix), *(("dns_domains", d) for d in conf.dns_domains)]:
            if owner := self._name_owner(name):
                theirs, other = owner
                raise ConfigError(conf.path, key, f'"{name}" {_used_by(other)}' if theirs == name
                                  else f'"{name}" overlaps "{theirs}" of {_basename(other)}')
        for forward, where in zip(conf.forwards, forwards(conf), strict=True):
            if other := (_clash(where, self.proxy_ports) or _clash(where, self.dns_ports)):
                raise ConfigError(conf.path, "forward", f'"{forward}": {where} {_used_by(other)}')
        if other := self.subnets.get(conf.veth_subnet):
            raise ConfigError(conf.path, "veth_subnet", f'"{conf.veth_subnet}" {_used_by(other)}; '
                                                        "set veth_subnet to a free /30")
        for listen in (conf.listen, *forwards(conf)):
            self.proxy_ports.setdefault(listen.port, []).append((listen, conf))
        if conf.dns_listen:
            self.dns_ports.setdefault(conf.dns_listen.port, []).append((conf.dns_listen, conf))
        for name in (conf.suffix, *conf.dns_domains):
            self.names[name] = conf
            for parent in _parents(name):
                self.parents[parent] = (name, conf)
        self.subnets[conf.veth_subnet] = conf

    def _name_owner(self, name: str) -> tuple[str, TailnetConf] | None:
        """The claimed name that is ``name``, a parent or a child of it, and its conf."""
        for claimed in (name, *_parents(name)):
            if claimed in self.names:
                return claimed, self.names[claimed]
        return self.parents.get(name)


def forwards(conf: TailnetConf) -> list[Listen]:
    """Where the conf's forwards listen (a port is one conf's, whatever its protocol)."""
    return [Listen(conf.listen.address, forward.port) for forward in conf.forwards]


def _parents(name: str) -> list[str]:
    labels = name.split(".")
    return [".".join(labels[i:]) for i in range(1, len(labels))]


def _clash(listen: Listen, owners: dict[int, list[tuple[Listen, TailnetConf]]],
           share: bool = False) -> TailnetConf | None:
    """The conf already listening where ``listen`` would; ``share``: the very same address
    is no clash (every tailnet's DNS names are served by one socket)."""
    for theirs, other in owners.get(listen.port, ()):
        if share and theirs == listen:
            continue
        if same_address(theirs, listen):
            return other
    return None


def same_address(a: Listen, b: Listen) -> bool:
    """Whether the two could not both bind their port: the same address, or an unspecified
    one (0.0.0.0, ::), which takes the port on every address."""
    return a.address == b.address or a.address.is_unspecified or b.address.is_unspecified


def _basename(conf: TailnetConf) -> str:
    return os.path.basename(conf.path)


def _used_by(conf: TailnetConf) -> str:
    return f"is already used by {_basename(conf)}"
