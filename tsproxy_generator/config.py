"""The conf model: /etc/tsproxy.d/NAME.conf -> a validated, frozen TailnetConf.

The generator (at boot) and `tsproxy check` call the same `load` and `load_all`, so they
print the same error line. This module sits on the boot path: standard library and
configobj only.
"""

from __future__ import annotations

import ipaddress
import os
import re
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from configobj import ConfigObj, ConfigObjError, DuplicateError, flatten_errors, get_extra_values
from validate import ValidateError, Validator, VdtTypeError

from .paths import CONF_DIR

CONF_SUFFIX = ".conf"

# The host-side veth is called ts-NAME and interface names hold 15 bytes.
NAME_RE = re.compile(r"[a-z][a-z0-9-]{0,11}")
LABEL_RE = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
# Derived veth /30s come from here; an explicit veth_subnet may be anywhere.
VETH_POOL = ipaddress.IPv4Network("10.200.0.0/16")
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
""".splitlines()

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


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
        host = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        return f"{host}:{self.port}"


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

    @property
    def netns(self) -> str:
        return netns_name(self.name)

    @property
    def veth_host(self) -> ipaddress.IPv4Interface:
        return ipaddress.IPv4Interface(f"{self.veth_subnet[1]}/30")

    @property
    def veth_ns(self) -> ipaddress.IPv4Interface:
        return ipaddress.IPv4Interface(f"{self.veth_subnet[2]}/30")


# -- value checks, named in CONFIGSPEC; each raises with the message the user sees ------

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
    if len(name) > 200 or not all(LABEL_RE.fullmatch(label) for label in name.split(".")):
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
    if not LABEL_RE.fullmatch(text):
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


VALIDATOR_CHECKS = {
    "listen": check_listen, "suffix": check_suffix, "label": check_label,
    "abspath": check_abspath, "url": check_url, "subnet30": check_subnet30,
    "cidr_list": check_cidr_list, "tailscaled_args": check_tailscaled_args,
    "identities": check_identities, "dns_listen": check_dns_listen,
    "domain_list": check_domain_list,
}
# Parsed once, not per conf: the generator reads every conf at boot. validate() only reads
# the spec, and the validator's cache of parsed checks hands out copies.
SPEC = ConfigObj(CONFIGSPEC, raise_errors=True, file_error=True, _inspec=True)
VALIDATOR = Validator(VALIDATOR_CHECKS)


# -- loading ----------------------------------------------------------------------------

def instance_name(path: str) -> str:
    """The instance name is the file name: it becomes a unit instance, a netns and a link."""
    base = os.path.basename(path)
    name = base[: -len(CONF_SUFFIX)] if base.endswith(CONF_SUFFIX) else base
    if not NAME_RE.fullmatch(name) or name.endswith("-"):
        raise ConfigError(path, None, f'instance name "{name}" must be 1-12 of a-z, 0-9 and -, '
                                      "starting with a letter")
    return name


def netns_name(name: str) -> str:
    """The instance's network namespace, and the host side of its veth: `ip link` shows
    whose it is."""
    return f"ts-{name}"


def derived_subnet(name: str) -> ipaddress.IPv4Network:
    """A /30 in VETH_POOL picked by a hash of the name: stable whatever other confs exist.
    (crc32, not hashlib: loading OpenSSL would cost the boot path more than all the rest.)"""
    slots = VETH_POOL.num_addresses // 4
    slot = zlib.crc32(name.encode()) % slots
    return ipaddress.IPv4Network((int(VETH_POOL.network_address) + 4 * slot, 30))


def _parse(path: str) -> tuple[ConfigObj, list[ConfigError]]:
    """The conf and its bad lines: what configobj could read of a conf with bad lines is
    still judged, so one run names every problem."""
    try:
        with open(path, encoding="utf-8") as file:
            lines = file.read().splitlines()
        return ConfigObj(lines, configspec=SPEC, interpolation=False, _inspec=False), []
    except (OSError, UnicodeDecodeError) as error:
        message = "not valid UTF-8" if isinstance(error, UnicodeDecodeError) else (
            error.strerror or str(error))
        raise ConfigError(path, None, message) from None
    except ConfigObjError as error:
        problems = [_parse_problem(path, e) for e in getattr(error, "errors", None) or [error]]
        read = getattr(error, "config", None)
        if read is None:
            raise _first_and_more(problems) from None
        conf = ConfigObj(read.dict(), configspec=SPEC, interpolation=False, _inspec=False)
        return conf, problems


def _parse_problem(path: str, error: Exception) -> ConfigError:
    line = getattr(error, "line_number", None)
    if isinstance(error, DuplicateError) and line:
        text = getattr(error, "line", "").strip()
        if text.startswith("["):
            return ConfigError(path, None, f"section {text} given twice (line {line})")
        return ConfigError(path, text.partition("=")[0].strip(), f"given twice (line {line})")
    text = re.sub(r" at line \d+\.$", "", str(error))
    return ConfigError(path, None, f"line {line}: {text}" if line else text)


def _first_and_more(problems: Iterable[ConfigError]) -> ConfigError:
    first, *more = problems
    return ConfigError(first.path, first.key, first.message, more)


def load(path: str, root: str = "/") -> TailnetConf:
    """Validate one conf on its own; cross-conf rules live in `load_all`. A bad conf raises
    one ConfigError naming every problem found (its `problems`).

    `root` is where absolute paths named in the conf are looked up (tests use a fake root).
    """
    name = instance_name(path)
    conf, bad_lines = _parse(path)
    results = conf.validate(VALIDATOR, preserve_errors=True)
    problems: list[ConfigError] = []
    # Extra values are only known once validate() has run.
    for sections, key in get_extra_values(conf):
        kind = "section" if isinstance(conf.get(key), dict) else "key"
        problems.append(ConfigError(path, ".".join([*sections, key]),
                                    f"unknown {kind} (see tsproxy.d(5))"))
    bad: set[str] = set()
    for _sections, key, error in flatten_errors(conf, results):
        bad.add(key)
        problems.append(ConfigError(path, key, _validate_message(
            error, conf.get(key), conf.configspec.get(key, ""))))
    for key in ("authkey_file", "users_file"):
        if key not in bad and (problem := _check_file(path, key, conf[key], root)):
            problems.append(problem)
    if bad_lines or problems:
        # Bad lines first, then keys in the order the file has them; missing ones last.
        line = {key: index for index, key in enumerate(conf.scalars + conf.sections)}
        problems.sort(key=lambda problem: line.get(problem.key or "", len(line)))
        raise _first_and_more(bad_lines + problems)
    return TailnetConf(
        name=name,
        path=path,
        listen=conf["listen"],
        suffix=conf["suffix"] or name,
        autostart=conf["autostart"],
        authkey_file=conf["authkey_file"],
        login_server=conf["login_server"],
        accept_routes=conf["accept_routes"],
        hostname=conf["hostname"] or f"tsproxy-{name}",
        veth_subnet=conf["veth_subnet"] or derived_subnet(name),
        tailscaled_args=conf["tailscaled_args"],
        allow_clients=conf["allow_clients"],
        users_file=conf["users_file"],
        allow_identities=conf["allow_identities"],
        identity_socket=conf["identity_socket"],
        allow_egress=conf["allow_egress"],
        max_connections=conf["max_connections"],
        max_connections_per_client=conf["max_connections_per_client"],
        dns_listen=_dns_listen(conf["dns_listen"], conf["listen"]),
        dns_domains=conf["dns_domains"],
    )


def _dns_listen(value: Listen | bool | None, listen: Listen) -> Listen | None:
    if value is None:
        return Listen(listen.address, DNS_PORT)
    return value if isinstance(value, Listen) else None


def _check_file(path: str, key: str, name: str | None, root: str) -> ConfigError | None:
    if name is None:
        return None
    try:
        mode = os.stat(os.path.join(root, name[1:])).st_mode
    except OSError:
        return ConfigError(path, key, f'"{name}" does not exist')
    # A password or an auth key in a file others can read is a leak waiting to happen.
    if mode & 0o077:
        return ConfigError(path, key, f'"{name}" is readable by group or others '
                                      f"(mode {mode & 0o777:o}): chmod 600 it")
    return None


def _validate_message(error: object, value: object, spec: str) -> str:
    if error is False:
        return "is missing (it has no default)"
    if isinstance(error, VdtTypeError):  # the built-in boolean and integer checks raise this
        kind = "an integer" if spec.startswith("integer") else "a boolean (yes or no)"
        return f'"{value}" is not {kind}'
    return str(error)


def conf_paths(conf_dir: str = CONF_DIR) -> list[str]:
    try:
        names = sorted(os.listdir(conf_dir))
    except FileNotFoundError:
        return []
    return [os.path.join(conf_dir, n) for n in names if n.endswith(CONF_SUFFIX)]


def load_all(paths: Iterable[str], root: str = "/") -> tuple[list[TailnetConf], list[ConfigError]]:
    """Every good conf, and every problem of each bad one, in order.

    Confs are taken in file-name order; when two clash (listen port, DNS names, veth subnet),
    the first keeps it and the later one is the bad conf, so adding a file never breaks a
    tailnet that already runs.
    """
    good: list[TailnetConf] = []
    errors: list[ConfigError] = []
    claims = _Claims()
    for path in paths:
        try:
            conf = load(path, root)
            claims.take(conf)
        except ConfigError as error:
            errors.extend(error.problems)
        else:
            good.append(conf)
    return good, errors


class _Claims:
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
        if other := self.subnets.get(conf.veth_subnet):
            raise ConfigError(conf.path, "veth_subnet", f'"{conf.veth_subnet}" {_used_by(other)}; '
                                                        "set veth_subnet to a free /30")
        self.proxy_ports.setdefault(conf.listen.port, []).append((conf.listen, conf))
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
        # An unspecified address (0.0.0.0, ::) takes the port on every address.
        if theirs.address == listen.address or listen.address.is_unspecified \
                or theirs.address.is_unspecified:
            return other
    return None


def _basename(conf: TailnetConf) -> str:
    return os.path.basename(conf.path)


def _used_by(conf: TailnetConf) -> str:
    return f"is already used by {_basename(conf)}"
