"""The conf's value checks, each named in CONFIGSPEC: a key's text -> its value, or a
ValidateError with the message the user sees. On the boot path: standard library and
configobj's validate only.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable

from validate import ValidateError

from .addresses import PUBLISHED_LABEL, Network, ip_literal, is_host_name
from .model import Forward, Listen

DNS_PORT = 53
# tsproxy sets these itself, per instance.
RESERVED_TAILSCALED_ARGS = ("--statedir", "--state", "--socket", "--tun", "--socks5-server",
                            "--outbound-http-proxy-listen")

CONFIGSPEC = """
listen = listen()
suffix = suffix(default=None)
autostart = boolean(default=yes)
authkey_file = abspath(default=None)
login_server = url(default=None)
accept_routes = boolean(default=yes)
hostname = label(default=None)
veth_subnet = subnet30(default=None)
tailscaled_args = tailscaled_args(default=list())
allow_clients = cidr_list(default=list(100.64.0.0/10, fd7a:115c:a1e0::/48, 127.0.0.0/8, ::1/128))
users_file = abspath(default=None)
allow_identities = identities(default=list())
identity_socket = abspath(default=/run/tailscale/tailscaled.sock)
allow_egress = cidr_list(default=list())
max_connections = integer(min=1, max=1000000, default=20000)
max_connections_per_client = integer(min=1, max=1000000, default=2000)
dns_listen = dns_listen(default=None)
dns_domains = domain_list(default=list())
forward = forward_list(default=list())
""".splitlines()


def one_value(check: Callable[[str], object]) -> Callable[[object], object]:
    """For keys that take one value: None (the key's default) passes through unchecked, and a
    comma-separated list, which configobj hands over as a list, is an error."""
    def checked(value: object) -> object:
        if value is None:
            return None
        if not isinstance(value, str):
            raise ValidateError("takes one value, not a comma-separated list")
        return check(value)
    return checked


@one_value
def check_listen(text: str) -> Listen:
    match = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\d+)|([0-9.]+):(\d+)", text)
    if not match:
        raise ValidateError(f'"{text}" is not IP:PORT (IPv6 as [ADDR]:PORT)')
    host, port = (match[1], match[2]) if match[1] else (match[3], match[4])
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValidateError(f'"{host}" is not an IP address') from None
    if not 1 <= int(port) <= 65535:
        raise ValidateError(f'port "{port}" is not in 1..65535')
    return Listen(address, int(port))


def domain(text: str) -> str:
    name = text.lower().strip(".")
    if len(name) > 200 or not all(PUBLISHED_LABEL.fullmatch(label) for label in name.split(".")):
        raise ValidateError(f'"{text}" is not a DNS suffix (labels of a-z, 0-9 and -)')
    return name


check_suffix = one_value(domain)


def check_domain_list(value: str | list[str]) -> tuple[str, ...]:
    return tuple(domain(item) for item in _items(value))


@one_value
def check_dns_listen(text: str) -> object:
    """IP:PORT, or "no": not served. (None, the default, becomes the proxy's IP, port 53.)"""
    if text.lower() in ("no", "off", "false", "0"):
        return False
    return check_listen(text)


@one_value
def check_label(text: str) -> str:
    if not PUBLISHED_LABEL.fullmatch(text):
        raise ValidateError(f'"{text}" is not a host name (1-63 of a-z, 0-9 and -)')
    return text


@one_value
def check_abspath(text: str) -> str:
    if not os.path.isabs(text):
        raise ValidateError(f'"{text}" is not an absolute path')
    return os.path.normpath(text)


@one_value
def check_url(text: str) -> str:
    if not re.fullmatch(r"https?://[^\s/?#]+(/\S*)?", text):
        raise ValidateError(f'"{text}" is not an http:// or https:// URL')
    return text


@one_value
def check_subnet30(text: str) -> ipaddress.IPv4Network:
    try:
        network = ipaddress.IPv4Network(text)
    except ValueError:
        raise ValidateError(f'"{text}" is not an IPv4 network such as 10.200.0.4/30') from None
    if network.prefixlen != 30:
        raise ValidateError(f'"{text}" is not a /30')
    return network


def _items(value: str | list[str]) -> list[str]:
    """A list key's items: configobj gives one item as a string, and `key =` as ""."""
    if isinstance(value, str):
        return [value] if value else []
    return value


def check_cidr_list(value: str | list[str]) -> tuple[Network, ...]:
    items = _items(value)
    networks = []
    for item in items:
        try:
            networks.append(ipaddress.ip_network(item))
        except ValueError:
            raise ValidateError(f'"{item}" is not a network in CIDR form '
                        "(host bits must be zero)") from None
    return tuple(networks)


def check_tailscaled_args(value: str | list[str]) -> tuple[str, ...]:
    items = _items(value)
    for item in items:
        if not re.fullmatch(r"--?[a-z][a-z0-9-]*(=\S*)?", item) or re.search(r"[\"'\\]", item):
            raise ValidateError(f'"{item}" is not a single --flag or --flag=value '
                                "(no spaces or quotes)")
        if item.lstrip("-").split("=")[0] in (flag[2:] for flag in RESERVED_TAILSCALED_ARGS):
            raise ValidateError(f'"{item}" is set by tsproxy for each instance')
    return tuple(items)


def check_identities(value: str | list[str]) -> tuple[str, ...]:
    items = _items(value)
    for item in items:
        # A login name (user@example.com, or a GitHub-style name@github) or an ACL tag.
        if not re.fullmatch(r"tag:[a-z0-9-]+|[^\s@,]+@[^\s@,]+", item):
            raise ValidateError(f'"{item}" is not a login name (user@example.com) '
                                "or a tag (tag:name)")
    return tuple(items)


FORWARD_RE = re.compile(r"(\d+)(?:/(tcp|udp))?=(?:\[([0-9a-fA-F:.]+)\]|([^\s:\[\]]+)):(\d+)")


def check_forward_list(value: str | list[str]) -> tuple[Forward, ...]:
    forwards: dict[tuple[int, str], Forward] = {}
    for item in _items(value):
        match = FORWARD_RE.fullmatch(item)
        if not match:
            raise ValidateError(f'"{item}" is not PORT[/tcp|/udp]=HOST:PORT '
                                "(IPv6 as [ADDR]:PORT)")
        port, protocol, v6, host, target_port = match.groups()
        host = v6 or host
        for number in (port, target_port):
            if not 1 <= int(number) <= 65535:
                raise ValidateError(f'"{item}": port "{number}" is not in 1..65535')
        if not (ip_literal(v6) if v6 else is_host_name(host)):
            raise ValidateError(f'"{item}": "{host}" is not a host name or IP address')
        forward = Forward(int(port), protocol or "tcp", host, int(target_port))
        if (key := (forward.port, forward.protocol)) in forwards:
            raise ValidateError(f'"{item}": {forward.port}/{forward.protocol} is forwarded '
                                f'already ("{forwards[key]}")')
        forwards[key] = forward
    return tuple(forwards.values())


VALIDATOR_CHECKS = {
    "listen": check_listen, "suffix": check_suffix, "label": check_label,
    "abspath": check_abspath, "url": check_url, "subnet30": check_subnet30,
    "cidr_list": check_cidr_list, "tailscaled_args": check_tailscaled_args,
    "identities": check_identities, "dns_listen": check_dns_listen,
    "domain_list": check_domain_list, "forward_list": check_forward_list,
}
