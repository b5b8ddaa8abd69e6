"""What `up` made of an instance's network, as it is now: the namespace, the host end of the
veth, the instance's nft table and, while tsproxy turned the host's forwarding on, the
forwarding guard. One look costs a stat, an ioctl and one table listing through libnftables
in this process (two while the guard is due): cheap enough for the watchdog every 2 s, and
what status and doctor judge too (health.network).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from tsproxy_generator.vocabulary import netns_name, nft_table

from . import forwarding, nftlib
from .netns import link_exists, netns_path


@dataclass(frozen=True)
class Shape:
    """What `up` made, as far as anyone compares it."""

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
    veth = link_exists(ns)
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
