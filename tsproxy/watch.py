"""The instance's watchdog: notices when its network is taken away by hand and has systemd
rebuild it.

`ip netns del ts-NAME`, `nft delete table inet tsproxy-NAME` or `nft flush ruleset` leave
every unit of the instance "active": tailscaled and the proxy live on in a namespace no
longer pinned, without NAT or isolation rules, and a host that did not forward before
tsproxy forwards for everyone once the guard of forwarding.py is gone. Nothing in systemd
sees that, so tsproxy-watch@NAME.service (started with the instance, bound to it) looks
every INTERVAL seconds at what `up` made and, when a piece is missing or changed, restarts
tsproxy@NAME: `down` and `up` converge from any half-made state, and the instance's other
units restart with it. A probe costs a stat, an ioctl, and one table listing through
libnftables, in this process (two while the guard is due).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from tsproxy_generator.vocabulary import INSTANCE, netns_name, nft_table, unit

from . import forwarding, nftlib
from .netns import netns_path

INTERVAL = 2.0  # detection within 2 s, the rebuild in about 1 s more: well inside 10 s


@dataclass(frozen=True)
class Shape:
    """What `up` made, as far as the watchdog compares it."""

    netns: tuple[int, int] | None  # (st_dev, st_ino) of /run/netns/ts-NAME: the namespace
    veth: bool  # the host end of the veth exists
    table: tuple[tuple[str, int], ...] | None  # (chain, number of rules) of the nft table
    # Whether tsproxy turned the host's forwarding on, so its guard must be there; and the
    # guard's shape, like the table's.
    guard_due: bool = False
    guard: tuple[tuple[str, int], ...] | None = None


def look(name: str, with_table: bool = True) -> Shape:
    ns = netns_name(name)
    try:
        info = os.stat(netns_path(ns))
        netns: tuple[int, int] | None = (info.st_dev, info.st_ino)
    except OSError:
        netns = None
    try:
        socket.if_nametoindex(ns)
        veth = True
    except OSError:
        veth = False
    if not with_table:
        return Shape(netns, veth, None)
    due = forwarding.guarded()
    return Shape(netns, veth, table_shape(list_table(f"inet {nft_table(name)}")),
                 due, table_shape(list_table(forwarding.GUARD_TABLE)) if due else None)


def list_table(table: str) -> str | None:
    """`nft -j list table FAMILY NAME`, None when nftables has no such table to show."""
    try:
        return nftlib.listing(f"list table {table}")
    except nftlib.NftError:
        return None


def table_shape(listing: str | None) -> tuple[tuple[str, int], ...] | None:
    """Chains and their rule counts, from `nft -j list table`; a flushed table keeps its
    chains but loses every rule, so the counts tell it from a whole one."""
    if listing is None:
        return None
    try:
        items = json.loads(listing)["nftables"]
    except (ValueError, KeyError, TypeError):
        return None
    counts: dict[str, int] = {}
    for item in items:
        if "chain" in item:
            counts.setdefault(item["chain"]["name"], 0)
        elif "rule" in item:
            chain = item["rule"]["chain"]
            counts[chain] = counts.get(chain, 0) + 1
    return tuple(sorted(counts.items()))


def whole(shape: tuple[tuple[str, int], ...] | None) -> bool:
    """A table is there with its rules: a flushed one keeps its chains and loses the rules."""
    return bool(shape) and any(rules for _, rules in shape or ())


def problems(name: str, made: Shape, now: Shape) -> list[str]:
    """What differs from the shape `up` left (empty: all is well)."""
    ns, table = netns_name(name), f"inet {nft_table(name)}"
    found = []
    if now.netns is None:
        found.append(f"network namespace {ns} is gone")
    elif now.netns != made.netns:
        found.append(f"network namespace {ns} was replaced")
    if not now.veth:
        found.append(f"veth {ns} is gone")
    if now.table is None:
        found.append(f"nft table {table} is gone")
    elif now.table != made.table:
        found.append(f"nft table {table} was changed or flushed")
    if now.guard_due and now.guard is None:
        found.append(f"nft table {forwarding.GUARD_TABLE} is gone")
    elif now.guard_due and made.guard is not None and now.guard != made.guard:
        found.append(f"nft table {forwarding.GUARD_TABLE} was changed or flushed")
    return found


def restart(name: str) -> bool:
    """Queue `systemctl restart tsproxy@NAME`: --no-block, because the restart stops this
    watchdog too (it is bound to the instance)."""
    try:
        done = subprocess.run(["systemctl", "restart", "--no-block", unit(INSTANCE, name)],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:
        log(f"{name}: systemctl restart failed: {error}")
        return False
    if done.returncode != 0:
        log(f"{name}: systemctl restart failed: {done.stderr.strip()}")
    return done.returncode == 0


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run(name: str, interval: float = INTERVAL,
        probe: Callable[[str], Shape] = look, repair: Callable[[str], bool] = restart,
        sleep: Callable[[float], None] = time.sleep) -> None:
    """Watch until stopped; the first look is what `up` made (the unit starts after it)."""
    made = probe(name)
    # A piece already missing went between `up` and this start: repair it at once.
    found = problems(name, made, made)
    log(f"{name}: watching namespace {netns_name(name)} and nft table "
        f"inet {nft_table(name)} every {interval:g} s")
    while True:
        if found:
            log(f"{name}: {'; '.join(found)}: restarting {unit(INSTANCE, name, '')}")
            if repair(name):
                return
        sleep(interval)
        found = problems(name, made, probe(name))
