"""What `tsproxy client` prints: ready-to-paste client setup, one form per kind of client.

The texts are jinja2 templates beside this file (FORM.j2), rendered at run time; this module
only works out the addresses a client must use, which are not always the conf's: a proxy
listening on 0.0.0.0 is reached at the address the user gives with --gateway.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import jinja2

from tsproxy_generator.addresses import Address
from tsproxy_generator.model import Forward, Listen, TailnetConf
from tsproxy_generator.values import DNS_PORT

from .. import pac
from ..errors import TsproxyError

# Every form, in the order `tsproxy client` without --for prints them, with its heading.
FORMS = {
    "macos": "macOS: resolver files and the PAC URL",
    "linux": "Linux with systemd-resolved: resolver drop-ins",
    "ssh": "ssh: ~/.ssh/config",
    "firefox": "Firefox: user.js",
    "env": "shell (bash, zsh): one command through a tailnet",
    "pac": "the PAC file (every proxy serves it at /proxy.pac)",
    "forwards": "forwards: what programs without proxy support connect to",
}
# How people usually point a client at a forward, by the target's well-known port.
FORWARD_EXAMPLES = {
    ("tcp", 22): "ssh -p {port} USER@{address}",
    ("tcp", 3306): "mysql -h {address} -P {port}",
    ("tcp", 3389): "open 'rdp://full%20address=s:{endpoint}'",
    ("tcp", 5432): "psql -h {address} -p {port}",
    ("tcp", 5900): "open vnc://{endpoint}",
    ("tcp", 6379): "redis-cli -h {address} -p {port}",
    ("udp", 53): "dig @{address} -p {port} NAME",
    ("tcp", 53): "dig +tcp @{address} -p {port} NAME",
}
HERE = os.path.dirname(os.path.abspath(__file__))


@dataclass(frozen=True)
class Forwarded:
    """A forward as a client reaches it."""
    at: Listen  # where the client connects
    forward: Forward

    @property
    def example(self) -> str | None:
        example = FORWARD_EXAMPLES.get((self.forward.protocol, self.forward.target_port))
        return example.format(address=self.at.address, port=self.at.port,
                              endpoint=self.at) if example else None


@dataclass(frozen=True)
class Client:
    """One tailnet as a client sees it."""
    name: str
    domains: tuple[str, ...]  # its suffix, then its dns_domains
    proxy: Listen
    dns: Listen | None  # None: the conf says dns_listen = no
    forwards: tuple[Forwarded, ...] = ()

    @property
    def dns_server(self) -> str:
        """systemd-resolved's DNS= form: the port only when it is not 53."""
        if self.dns is None:
            return ""
        return str(self.dns.address) if self.dns.port == DNS_PORT else str(self.dns)

    @property
    def function(self) -> str:
        """The shell function that runs one command through this tailnet."""
        return "via_" + self.name.replace("-", "_")


def clients(confs: Iterable[TailnetConf], gateway: Address | None) -> list[Client]:
    found = []
    for conf in confs:
        proxy = _reach(conf.name, "listen", conf.listen, gateway)
        dns = _reach(conf.name, "dns_listen", conf.dns_listen, gateway) \
            if conf.dns_listen else None
        forwards = tuple(Forwarded(Listen(proxy.address, forward.port), forward)
                         for forward in conf.forwards)
        found.append(Client(conf.name, (conf.suffix, *conf.dns_domains), proxy, dns, forwards))
    return found


def _reach(name: str, key: str, listen: Listen, gateway: Address | None) -> Listen:
    reached = pac.reach(listen, gateway)
    if reached is not None:
        return reached
    if gateway is None:
        raise TsproxyError(f"{name}: {key} {listen} is every address of this host: say which "
                           "one clients reach it at with --gateway IP")
    raise TsproxyError(f"{name}: {key} {listen} takes IPv4 only, --gateway {gateway} is IPv6")


def render(form: str, found: Sequence[Client]) -> str:
    """One form's text for these tailnets (at least one)."""
    if form == "pac":
        return pac.render([pac.Route(c.name, c.domains, c.proxy) for c in found])
    # Any proxy serves the PAC for every tailnet; the first named is as good as any.
    url = f"http://{found[0].proxy}{pac.PATH}"
    return _environment().get_template(f"{form}.j2").render(clients=found, pac_url=url)


def render_all(found: Sequence[Client]) -> str:
    return "\n".join(f"### {heading} (--for {form})\n\n{render(form, found)}"
                     for form, heading in FORMS.items())


def _environment() -> jinja2.Environment:
    # Shell, ssh and JavaScript text: HTML escaping would only break it.
    return jinja2.Environment(loader=jinja2.FileSystemLoader(HERE), autoescape=False,
                              undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                              trim_blocks=True, lstrip_blocks=True)
