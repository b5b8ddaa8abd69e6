"""An instance's network: namespace ts-NAME, its veth pair, routes, NAT and resolv.conf.

`up` and `down` are ExecStart and ExecStop of tsproxy@NAME.service. Both converge: run
again on a complete, half-made or missing setup, they end in the same state. The start
path has a 1 s budget, so the work is an `ip -batch` per namespace and two nftables
transactions loaded through libnftables (the instance's rules are in nft.py, the host's
forwarding in forwarding.py). The order keeps the namespace from ever being connected
without its isolation rules.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import os
import shutil
import socket
from dataclasses import dataclass
from typing import Any

from tsproxy_generator.model import ConfigError, TailnetConf
from tsproxy_generator.paths import NETNS_ETC_DIR, TAILSCALED
from tsproxy_generator.vocabulary import netns_etc, netns_name

from . import command, forwarding, nft, nftlib
from .errors import TsproxyError

NETNS_RUN_DIR = "/run/netns"  # where `ip netns add` pins a namespace
HOST_RESOLV_CONF = "/etc/resolv.conf"
RESOLVED_UPSTREAMS = "/run/systemd/resolve/resolv.conf"
NS_IFNAME = "eth0"  # the namespace side of the veth; created there, never on the host


def require_root(command: str,
                 why: str = "it changes network namespaces, interfaces and nftables") -> None:
    if os.geteuid() != 0:
        raise TsproxyError(f"tsproxy {command} must run as root: {why}")


def tailscaled_path() -> str:
    # Tests point this at a stand-in; installed systems never set it.
    return os.environ.get("TSPROXY_TAILSCALED", TAILSCALED)


@dataclass
class _Made:
    """What this run of `up` created, so a failure undoes that and nothing older."""

    table: bool = False
    forwarding: bool = False  # joined the instances that hold the host's forwarding
    netns: bool = False
    veth: bool = False
    etc_dir: bool = False


def up(conf: TailnetConf) -> list[str]:
    """Build or repair the instance's network; returns warnings for the log."""
    name, ns = conf.name, conf.netns
    # Checks first: a refused start changes nothing.
    if not os.access(tailscaled_path(), os.X_OK):
        raise TsproxyError(f"{name}: {tailscaled_path()} not found: install the tailscale package")
    _check_overlap(conf)
    firewall, handles = _firewall(name)

    made = _Made()
    try:
        # Rules before links: the namespace is never up without its isolation. They match
        # interface names, so they need no interface to exist yet.
        made.table = not firewall.table_exists
        nftlib.load(nft.up_rules(name, conf.veth_subnet, handles))
        made.forwarding = forwarding.join(name)
        host = []
        if not os.path.exists(netns_path(ns)):
            made.netns = True
            host.append(f"netns add {ns}")
            # A veth whose namespace is gone is a leftover: its peer cannot be in a new one.
            if link_exists(ns):
                host.append(f"link del {ns}")
        if made.netns or not link_exists(ns):
            made.veth = True
            host.append(f"link add {ns} type veth peer name {NS_IFNAME} netns {ns}")
        host += [f"addr replace {conf.veth_host} dev {ns}", f"link set {ns} up"]
        _ip_batch([], host)
        _ip_batch(["-n", ns], [
            "link set lo up",
            f"addr replace {conf.veth_ns} dev {NS_IFNAME}",
            f"link set {NS_IFNAME} up",
            f"route replace default via {conf.veth_host.ip}",
        ])
        made.etc_dir = not os.path.isdir(netns_etc(name))
        warnings = _write_resolv_conf(name)
    except (TsproxyError, OSError) as error:
        _undo(name, made)
        raise TsproxyError(f"{name}: {_message(error)}") from None
    warnings += [f"{name}: forward chain {chain!r} has policy drop and tsproxy cannot add "
                 f'rules to it: accept iifname "{ns}" and oifname "{ns}" there, or the '
                 "namespace has no egress" for chain in firewall.closed_chains]
    return warnings


def down(name: str) -> None:
    """Remove what `up` made, from the name alone: the conf may be gone or broken by now."""
    ns = netns_name(name)
    try:
        # Links before rules: the namespace is never up without its isolation.
        _delete_links(ns, veth=True, netns=True)
        _delete_rules(name)
        forwarding.leave(name)
        _remove_etc_dir(name)
    except (TsproxyError, OSError) as error:
        raise TsproxyError(f"{name}: {_message(error)}") from None


# -- checks -------------------------------------------------------------------------------

def _check_overlap(conf: TailnetConf) -> None:
    """The /30 must not shadow or hide part of a network the host already routes."""
    subnet = conf.veth_subnet
    # `match` finds routes containing the /30, `root` routes inside it (addresses included,
    # through the local table); asking ip for just these stays fast on full-table routers.
    output = _ip_batch(["-j", "-4"], [f"route show table all match {subnet}",
                                      f"route show table all root {subnet}"])
    for route in _json_values(output):
        if route.get("dst") == "default" or route.get("dev") == conf.netns:
            continue
        raise TsproxyError(str(ConfigError(
            conf.path, "veth_subnet",
            f"{subnet} overlaps the host route {_describe_route(route)}; "
            "set veth_subnet to a free /30")))


def _describe_route(route: dict[str, Any]) -> str:
    words = []
    if route.get("type") not in (None, "unicast"):
        words.append(route["type"])
    words.append(route["dst"])
    if "gateway" in route:
        words += ["via", route["gateway"]]
    if "dev" in route:
        words += ["dev", route["dev"]]
    if route.get("table") not in (None, "main"):
        words += ["table", route["table"]]
    return " ".join(words)


# -- pieces -------------------------------------------------------------------------------

def _write_resolv_conf(name: str) -> list[str]:
    """Write the namespace's resolv.conf; the tailscaled unit binds it over /etc/resolv.conf.

    The namespace cannot use a nameserver on the host's loopback (127.0.0.53 of
    systemd-resolved is the host's, not the namespace's), nor IPv6 (its egress is IPv4 NAT).
    """
    ns = netns_name(name)
    source = HOST_RESOLV_CONF
    servers = _usable_nameservers(source)
    if not servers:
        # A host with only a local stub: ask for the stub's own upstreams.
        source = RESOLVED_UPSTREAMS
        servers = _usable_nameservers(source)
    warnings = []
    if not servers:
        source = HOST_RESOLV_CONF
        warnings.append(f"{name}: no IPv4 nameserver off the loopback in {HOST_RESOLV_CONF} or "
                        f"{RESOLVED_UPSTREAMS}: namespace {ns} has no DNS")
    text = (f"# Generated by tsproxy for network namespace {ns} from {source}\n"
            f"# when `tsproxy up {name}` ran; edits are lost on the next start.\n"
            + "".join(f"nameserver {server}\n" for server in servers))
    directory = netns_etc(name)
    os.makedirs(directory, mode=0o755, exist_ok=True)
    path = os.path.join(directory, "resolv.conf")
    # Replaced, not rewritten: a reader never sees half a file.
    with open(f"{path}.tmp", "w") as new:
        new.write(text)
    os.chmod(f"{path}.tmp", 0o644)
    os.replace(f"{path}.tmp", path)
    return warnings


def _usable_nameservers(path: str) -> list[str]:
    try:
        with open(path) as file:
            lines = file.read().splitlines()
    except OSError:
        return []
    servers = []
    for line in lines:
        words = line.split()
        if len(words) < 2 or words[0] != "nameserver":
            continue
        try:
            address = ipaddress.ip_address(words[1])
        except ValueError:
            continue  # IPv6 with a %zone, or junk: not usable from the namespace either way
        if address.version == 4 and not address.is_loopback and str(address) not in servers:
            servers.append(str(address))
    return servers


def _firewall(name: str) -> tuple[nft.Firewall, tuple[int, ...] | None]:
    """The ruleset as `up` and `down` need it, and the handles of the instance's rules in
    DOCKER-USER (None when there is no such chain)."""
    # The chain list says whether DOCKER-USER is there: listing it blind would leave "no
    # such chain" to be told from other refusals by nft's wording.
    firewall = nft.parse_chains(nftlib.listing("list chains"), name)
    if not firewall.docker_user:
        return firewall, None
    return firewall, nft.parse_docker_handles(nftlib.listing(nft.docker_user_listing()), name)


def _delete_rules(name: str) -> None:
    nftlib.load(nft.down_rules(name, _firewall(name)[1] or ()))


def _undo(name: str, made: _Made) -> None:
    """Best effort, in the order `down` uses: the error that got us here is the one to
    report."""
    ns = netns_name(name)
    with contextlib.suppress(TsproxyError):
        _delete_links(ns, veth=made.veth or made.netns, netns=made.netns)
    if made.forwarding:
        with contextlib.suppress(TsproxyError, OSError):
            forwarding.leave(name)
    if made.table:
        with contextlib.suppress(TsproxyError):
            _delete_rules(name)
    if made.etc_dir:
        with contextlib.suppress(OSError):
            _remove_etc_dir(name)


def _delete_links(ns: str, veth: bool, netns: bool) -> None:
    host = []
    # The veth goes by itself, not only with the namespace: a namespace outlives
    # `netns del` while a process (a tailscaled that would not stop) is still inside.
    if veth and link_exists(ns):
        host.append(f"link del {ns}")
    if netns and os.path.exists(netns_path(ns)):
        host.append(f"netns del {ns}")
    if host:
        _ip_batch([], host)


def _remove_etc_dir(name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(netns_etc(name))
    # iproute2 does not make /etc/netns, `up` did: gone with the last namespace's files.
    try:
        os.rmdir(NETNS_ETC_DIR)
    except OSError as error:
        if error.errno not in (errno.ENOENT, errno.ENOTEMPTY):
            raise


# -- running ip ---------------------------------------------------------------------------

def netns_path(ns: str) -> str:
    return os.path.join(NETNS_RUN_DIR, ns)


def link_exists(ifname: str) -> bool:
    # An ioctl in our own network namespace: no subprocess, and unlike /sys/class/net it
    # does not depend on which namespace mounted sysfs.
    try:
        socket.if_nametoindex(ifname)
    except OSError:
        return False
    return True


def _ip_batch(options: list[str], commands: list[str]) -> str:
    return command.run(["ip", *options, "-batch", "-"], "".join(f"{c}\n" for c in commands))


def _json_values(output: str) -> list[dict[str, Any]]:
    """The objects of the JSON arrays that `ip -j -batch` prints one after another."""
    decoder, values, position = json.JSONDecoder(), [], 0
    while position < len(output):
        if output[position].isspace():
            position += 1
            continue
        value, position = decoder.raw_decode(output, position)
        values += value if isinstance(value, list) else [value]
    return values


def _message(error: Exception) -> str:
    if isinstance(error, OSError) and error.filename:
        return f"{error.filename}: {error.strerror}"
    return str(error)

