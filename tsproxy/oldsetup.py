"""Finding a hand-made multi-tailnet setup, the kind tsproxy replaces: unit files that make
or enter a network namespace (`ip netns exec NS`, NetworkNamespacePath=), and units running
socat, CoreDNS, microsocks or a second tailscaled (one with its own --socket or state).

Only unit files are read here (no systemd, no /proc), so tests feed it a directory.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
from dataclasses import dataclass

from tsproxy_generator.model import Listen
from tsproxy_generator.vocabulary import netns_name

# Where an administrator's own units live (packages install under /lib or /usr/lib).
UNIT_DIRS = ("/etc/systemd/system", "/usr/local/lib/systemd/system")
PROGRAMS = ("socat", "coredns", "microsocks", "tailscaled", "3proxy", "danted", "dnsmasq")
EXEC_KEYS = ("ExecStartPre", "ExecStart", "ExecStartPost", "ExecStop", "ExecStopPost")
# `ip netns exec NS`, `ip netns add NS`, `ip -n NS`, /run/netns/NS (NetworkNamespacePath=,
# nsenter --net=...).
NETNS_RE = re.compile(r"\bip\s+(?:-\S+\s+)*netns\s+(?:exec|add)\s+([\w.-]+)"
                      r"|\bip\s+-n(?:etns)?\s+([\w.-]+)|/run/netns/([\w.-]+)")
SCRIPT_LIMIT = 65536  # a helper script bigger than this is no setup script
# The host's own tailscaled, as Tailscale's package runs it: never part of an old setup.
PRIMARY_SOCKET = "/run/tailscale/tailscaled.sock"


@dataclass(frozen=True)
class UnitFile:
    name: str  # e.g. expose-socks-tsFGPU.service
    path: str
    commands: tuple[tuple[str, ...], ...]  # each Exec line's argv, prefixes and `ip netns exec` off
    namespaces: frozenset[str]  # namespaces it makes or enters, also through its scripts
    text: str  # its name, the unit file and its scripts, for mentions of a name

    @property
    def programs(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(os.path.basename(argv[0]) for argv in self.commands if argv))

    def runs(self, program: str) -> tuple[str, ...] | None:
        """The argv of the first Exec line running `program`."""
        return next((argv for argv in self.commands
                     if argv and os.path.basename(argv[0]) == program), None)

    def mentions(self, word: str) -> bool:
        return re.search(rf"(?<![A-Za-z0-9]){re.escape(word)}(?![A-Za-z0-9])", self.text,
                         re.IGNORECASE) is not None


def unit_dirs() -> tuple[str, ...]:
    # Tests point this at temporary directories; installed systems never set it.
    value = os.environ.get("TSPROXY_UNIT_DIRS")
    return tuple(value.split(":")) if value else UNIT_DIRS


def read_units() -> list[UnitFile]:
    """Every .service file in unit_dirs(), except masked ones and tsproxy's own."""
    found: dict[str, UnitFile] = {}
    for directory in unit_dirs():
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            continue
        for name in names:
            path = os.path.join(directory, name)
            if (not name.endswith(".service") or name.startswith("tsproxy") or name in found
                    or os.path.realpath(path) == "/dev/null" or not os.path.isfile(path)):
                continue
            found[name] = parse_unit(name, path)
    return list(found.values())


def parse_unit(name: str, path: str) -> UnitFile:
    with open(path, encoding="utf-8", errors="replace") as file:
        text = file.read().replace("\\\n", " ")  # continuation lines
    commands = []
    scripts = []
    for line in text.splitlines():
        key, _, value = line.strip().partition("=")
        if key.strip() not in EXEC_KEYS:
            continue
        argv = command_argv(value)
        if argv:
            commands.append(argv)
            scripts.append(_script_text(argv[0]))
    whole = "\n".join([name, text, *scripts])
    namespaces = frozenset(next(group for group in match.groups() if group)
                           for match in NETNS_RE.finditer(whole))
    return UnitFile(name, path, tuple(commands), namespaces, whole)


def command_argv(value: str) -> tuple[str, ...]:
    """An Exec line's command as run: systemd's prefixes (-@:+!) and `ip netns exec NS`,
    `env A=B`, `/bin/sh -c '...'` wrappers taken off, so argv[0] is the real program."""
    try:
        argv = shlex.split(value.strip().lstrip("-@:+!|"))
    except ValueError:
        return ()
    while argv:
        program = os.path.basename(argv[0])
        if program == "ip" and argv[1:3] == ["netns", "exec"] and len(argv) > 4:
            argv = argv[4:]
        elif program == "env":
            argv = argv[1:]
            while argv and ("=" in argv[0] or argv[0].startswith("-")):
                argv = argv[1:]
        elif program in ("sh", "bash") and argv[1:2] == ["-c"] and len(argv) > 2:
            return command_argv(argv[2])
        else:
            return tuple(argv)
    return ()


def _script_text(program: str) -> str:
    """A shell script the unit runs (the seed's setup-ts-netns.sh makes the namespace)."""
    try:
        if os.path.getsize(program) > SCRIPT_LIMIT:
            return ""
        with open(program, encoding="utf-8", errors="replace") as file:
            text = file.read()
    except OSError:
        return ""
    return text if text.startswith("#!") else ""


def namespaces_of(units: list[UnitFile]) -> set[str]:
    """Namespaces named by the units, but tsproxy's own (ts-NAME)."""
    return {ns for unit in units for ns in unit.namespaces if not ns.startswith(netns_name(""))}


def option(argv: tuple[str, ...], name: str) -> str | None:
    """The value of `--name=V` or `--name V` (Go's flag package takes both, one dash too)."""
    for index, arg in enumerate(argv):
        flag, equals, value = arg.partition("=")
        if flag.lstrip("-") == name and flag.startswith("-"):
            if equals:
                return value
            return argv[index + 1] if index + 1 < len(argv) else None
    return None


def second_tailscaled(unit: UnitFile) -> bool:
    """A tailscaled that is not the host's own (tailscaled.service, the default socket)."""
    argv = unit.runs("tailscaled")
    if argv is None or unit.name == "tailscaled.service":
        return False
    return bool(unit.namespaces) or (option(argv, "socket") or PRIMARY_SOCKET) != PRIMARY_SOCKET


def tailscaled_state(unit: UnitFile) -> str | None:
    """Where a tailscaled keeps its node: its --statedir (holding tailscaled.state), or its
    --state file when that lies elsewhere (`mem:` and `kube:` states are nowhere on disk)."""
    argv = unit.runs("tailscaled")
    if argv is None:
        return None
    statedir, state = option(argv, "statedir"), option(argv, "state")
    if state and os.path.isabs(state) and (
            not statedir or os.path.normpath(state) != os.path.join(statedir, "tailscaled.state")):
        return state  # a file: migrate copies it as the instance's tailscaled.state
    return statedir


def socat_listen(unit: UnitFile) -> Listen | None:
    """Where a socat unit listens: `TCP-LISTEN:11080,bind=100.121.76.21,fork` (no bind:
    every address)."""
    argv = unit.runs("socat")
    for arg in argv or ():
        match = re.fullmatch(r"TCP[46]?-L(?:ISTEN)?:(\d+)(,.*)?", arg, re.IGNORECASE)
        if not match:
            continue
        bind = re.search(r",bind=\[?([0-9A-Fa-f.:]+?)\]?(?:,|$)", match[2] or "")
        try:
            address = ipaddress.ip_address(bind[1] if bind else "0.0.0.0")
        except ValueError:
            return None
        return Listen(address, int(match[1]))
    return None
