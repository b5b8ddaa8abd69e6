"""Loading confs: /etc/tsproxy.d/NAME.conf -> a validated, frozen TailnetConf (model.py).

The generator (at boot) and `tsproxy check` call the same `load` and `load_all`, so they
print the same error line. This module sits on the boot path: standard library and
configobj only.
"""

from __future__ import annotations

import ipaddress
import os
import re
import zlib
from collections.abc import Iterable

from configobj import ConfigObj, ConfigObjError, DuplicateError, flatten_errors, get_extra_values
from validate import Validator, VdtTypeError

from .clashes import Claims, same_address
from .model import ConfigError, Forward, Listen, TailnetConf
from .paths import CONF_DIR
from .values import CONFIGSPEC, DNS_PORT, VALIDATOR_CHECKS
from .vocabulary import default_hostname

CONF_SUFFIX = ".conf"

# The host-side veth is called ts-NAME and interface names hold 15 bytes.
NAME_RE = re.compile(r"[a-z][a-z0-9-]{0,11}")
# Derived veth /30s come from here; an explicit veth_subnet may be anywhere.
VETH_POOL = ipaddress.IPv4Network("10.200.0.0/16")

# Parsed once, not per conf: the generator reads every conf at boot. validate() only reads
# the spec, and the validator's cache of parsed checks hands out copies.
SPEC = ConfigObj(CONFIGSPEC, raise_errors=True, file_error=True, _inspec=True)
VALIDATOR = Validator(VALIDATOR_CHECKS)


def instance_name(path: str) -> str:
    """The instance name is the file name: it becomes a unit instance, a netns and a link."""
    base = os.path.basename(path)
    name = base[: -len(CONF_SUFFIX)] if base.endswith(CONF_SUFFIX) else base
    if not NAME_RE.fullmatch(name) or name.endswith("-"):
        raise ConfigError(path, None, f'instance name "{name}" must be 1-12 of a-z, 0-9 and -, '
                                      "starting with a letter")
    return name


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
    if not bad & {"listen", "dns_listen", "forward"}:
        problems += _forward_clashes(path, conf["forward"], conf["listen"],
                                     _dns_listen(conf["dns_listen"], conf["listen"]))
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
        hostname=conf["hostname"] or default_hostname(name),
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
        forwards=conf["forward"],
    )


def _dns_listen(value: Listen | bool | None, listen: Listen) -> Listen | None:
    if value is None:
        return Listen(listen.address, DNS_PORT)
    return value if isinstance(value, Listen) else None


def _forward_clashes(path: str, forwards: tuple[Forward, ...], listen: Listen,
                     dns_listen: Listen | None) -> list[ConfigError]:
    """A forward listens on the conf's listen address: never on the proxy's port (its UDP
    side is the proxy's SOCKS5 UDP relay) nor the DNS responder's."""
    problems = []
    for forward in forwards:
        if forward.port == listen.port:
            problems.append(ConfigError(path, "forward", f'"{forward}": port {forward.port} is '
                                                         "the proxy's own (listen)"))
        elif dns_listen and forward.port == dns_listen.port and \
                same_address(dns_listen, listen):
            problems.append(ConfigError(path, "forward", f'"{forward}": port {forward.port} is '
                                                         "the DNS responder's (dns_listen)"))
    return problems


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
    """The confs in the directory, by name; none when it is missing. One that cannot be read
    (a user who is not root, when the administrator made it 0700) is a ConfigError: no confs
    would be a wrong answer."""
    try:
        names = sorted(os.listdir(conf_dir))
    except FileNotFoundError:
        return []
    except OSError as error:
        raise ConfigError(conf_dir, None, f"cannot read the directory: {error.strerror}") \
            from None
    return [os.path.join(conf_dir, n) for n in names if n.endswith(CONF_SUFFIX)]


def load_all(paths: Iterable[str], root: str = "/") -> tuple[list[TailnetConf], list[ConfigError]]:
    """Every good conf, and every problem of each bad one, in order.

    Confs are taken in file-name order; when two clash (listen port, DNS names, veth subnet),
    the first keeps it and the later one is the bad conf, so adding a file never breaks a
    tailnet that already runs.
    """
    good: list[TailnetConf] = []
    errors: list[ConfigError] = []
    claims = Claims()
    for path in paths:
        try:
            conf = load(path, root)
            claims.take(conf)
        except ConfigError as error:
            errors.extend(error.problems)
        else:
            good.append(conf)
    return good, errors
