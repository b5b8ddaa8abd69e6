"""Who holds a port: the processes owning a listening TCP socket or a bound UDP socket on an
address, each named with its pid and systemd unit, for status, doctor and migrate.

Read from /proc as ss(8) does, without running it: the kernel's socket tables give the
socket's inode, each process's fd directory says who has that inode open, its cgroup says
which unit started it. Sockets of other users' processes are only visible to root; for
others the answer is simply shorter.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from dataclasses import dataclass

from tsproxy_generator.addresses import Address, unmapped
from tsproxy_generator.model import Listen

from . import systemd
from .errors import TsproxyError

TCP_LISTEN = "0A"  # the state column of /proc/net/tcp{,6}
UDP_UNCONNECTED = "07"  # a bound UDP socket that is not connected to one peer


def proc() -> str:
    # Tests point this at a fake /proc; installed systems never set it.
    return os.environ.get("TSPROXY_PROC", "/proc")


@dataclass(frozen=True)
class Holder:
    pid: int
    command: str  # the process name, as ps shows it
    unit: str | None  # the systemd unit it runs in, None outside any

    def __str__(self) -> str:
        return f"{self.command} (pid {self.pid}{f', unit {self.unit}' if self.unit else ''})"


def holders(listen: Listen, protocol: str = "tcp") -> list[Holder]:
    """Every process holding `listen` for `protocol` ("tcp": listening, "udp": bound), by pid.
    A socket on the unspecified address (0.0.0.0, ::) holds the port on every address."""
    inodes = socket_inodes(listen, protocol)
    found = [holder(pid) for pid in sorted(owners(inodes))] if inodes else []
    # systemd holds the sockets of .socket units: name the socket unit, not init.scope.
    return [Holder(1, "systemd", socket_unit(listen, protocol)) if h.pid == 1 else h
            for h in found]


@dataclass(frozen=True)
class Held:
    listen: Listen
    protocol: str
    by: tuple[Holder, ...]

    def __str__(self) -> str:
        return f"{self.listen} ({self.protocol}) is held by {', '.join(map(str, self.by))}"

    @property
    def stop(self) -> str:
        """The command that frees the port: disabling the holders' units, when each runs in
        one that can be (a scope, such as a login session, cannot)."""
        units = [h.unit for h in self.by if h.unit and h.unit.endswith((".service", ".socket"))]
        if len(units) < len(self.by):
            return "stop it"
        return f"systemctl disable --now {' '.join(dict.fromkeys(units))}"


def held(listen: Listen, protocols: tuple[str, ...] = ("tcp",)) -> Held | None:
    """Who other than tsproxy holds `listen`, for the first of `protocols` someone holds;
    None when free (or when the holder cannot be seen: not root). tsproxy's own units
    (a proxy still serving on the socket it was handed, say) are no one else."""
    for protocol in protocols:
        found = [h for h in holders(listen, protocol)
                 if not (h.unit and h.unit.startswith("tsproxy"))]
        if found:
            return Held(listen, protocol, tuple(found))
    return None


def socket_inodes(listen: Listen, protocol: str) -> set[int]:
    state = TCP_LISTEN if protocol == "tcp" else UDP_UNCONNECTED
    found = set()
    for table in (protocol, protocol + "6"):
        try:
            with open(os.path.join(proc(), "net", table), encoding="ascii") as file:
                lines = file.read().splitlines()[1:]
        except OSError:
            continue  # no IPv6 in this kernel
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != state:
                continue
            address, port = parse_endpoint(fields[1])
            if port == listen.port and covers(address, listen.address):
                found.add(int(fields[9]))
    found.discard(0)  # a socket being torn down
    return found


def parse_endpoint(text: str) -> tuple[Address, int]:
    """`0100007F:1F90` -> 127.0.0.1, 8080. The kernel prints the address as 32-bit words in
    its own byte order, the port in network order."""
    hex_address, hex_port = text.split(":")
    raw = bytes.fromhex(hex_address)
    if sys.byteorder == "little":
        raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    address = ipaddress.ip_address(raw)
    return unmapped(address), int(hex_port, 16)


def covers(bound: Address, wanted: Address) -> bool:
    # An IPv6 wildcard takes IPv4 too unless the socket is IPV6_V6ONLY, which /proc does
    # not show: counting it is the safe side (binding may still fail).
    return bound == wanted or (bound.is_unspecified and (bound.version == 6
                                                         or wanted.version == 4))


def owners(inodes: set[int]) -> set[int]:
    """Pids with one of `inodes` open."""
    wanted = {f"socket:[{inode}]" for inode in inodes}
    found = set()
    for entry in os.scandir(proc()):
        if not entry.name.isdigit():
            continue
        try:
            fds = os.scandir(os.path.join(entry.path, "fd"))
        except OSError:
            continue  # gone, or another user's (not root)
        with fds:
            for fd in fds:
                try:
                    if os.readlink(fd.path) in wanted:
                        found.add(int(entry.name))
                        break
                except OSError:
                    continue
    return found


def holder(pid: int) -> Holder:
    return Holder(pid, _read(pid, "comm") or "?", unit_of(pid))


def unit_of(pid: int) -> str | None:
    """The unit of a process: the last .service or .scope of its cgroup path (cgroup v2's
    `0::/system.slice/socat.service`; v1's name=systemd line says the same)."""
    for line in _read(pid, "cgroup").splitlines():
        hierarchy, _, path = line.partition(":")[2].partition(":")
        if hierarchy not in ("", "name=systemd"):
            continue
        units = [part for part in path.split("/") if part.endswith((".service", ".scope"))]
        if units:
            return units[-1]
    return None


def socket_unit(listen: Listen, protocol: str) -> str | None:
    """The .socket unit listening on `listen`, asked of systemd."""
    kind = "Stream" if protocol == "tcp" else "Datagram"
    try:
        listens = systemd.socket_listens()
    except TsproxyError:
        return None  # only a name in a message is lost
    for unit, socket_kind, where in listens:
        host, _, port = where.rpartition(":")
        try:
            address = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            continue  # a path or a netlink socket
        if socket_kind == kind and port == str(listen.port) and covers(address, listen.address):
            return unit
    return None


def _read(pid: int, name: str) -> str:
    try:
        with open(os.path.join(proc(), str(pid), name), encoding="utf-8",
                  errors="replace") as file:
            return file.read().strip()
    except OSError:
        return ""
