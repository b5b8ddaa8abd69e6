"""`tsproxy status [NAME...]`: one row per instance, healthy or what to do about it.

Exit status 0 when every listed instance is healthy, 3 when one is not (as `systemctl
status` does for a unit that is not running), 1 on a usage error such as an unknown NAME.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..errors import TsproxyError
from ..instances import checked_name, conf_dir, load_instances
from ..status import Status, gather

UNHEALTHY = 3
# Unit roles as columns, with short state words: the table must fit a terminal.
UNIT_COLUMNS = (("INST", "instance"), ("TSD", "tailscaled"), ("SOCK", "proxy_socket"),
                ("PROXY", "proxy"), ("DNS", "dns_socket"), ("WATCH", "watch"))
SHORT = {"active": "up", "inactive": "-", "failed": "FAILED", "activating": "starting",
         "deactivating": "stopping", "not-found": "?"}
GREEN, RED, RESET = "\033[32m", "\033[31m", "\033[0m"


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help="instances to show (default: every conf in /etc/tsproxy.d)")
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def run(args: argparse.Namespace) -> int:
    statuses = collect(args.names)
    if args.json:
        print(json.dumps([status.as_json() for status in statuses], indent=1))
    elif not statuses:
        print(f"no confs in {conf_dir()}")
    else:
        print(table(statuses, colour=use_colour()))
    return 0 if all(status.healthy for status in statuses) else UNHEALTHY


def collect(names: list[str]) -> list[Status]:
    good, errors = load_instances()
    bad = {os.path.basename(error.path)[: -len(".conf")]: str(error) for error in errors}
    known = {conf.name for conf in good} | set(bad)
    for name in names:
        if checked_name(name) not in known:
            raise TsproxyError(f"no instance {name!r}: "
                               f"{os.path.join(conf_dir(), name + '.conf')} does not exist")
    if names:
        good = [conf for conf in good if conf.name in names]
        bad = {name: error for name, error in bad.items() if name in names}
    return gather(good, bad)


def use_colour() -> bool:
    # Colour only for a person at a terminal (and never with NO_COLOR, no-color.org).
    return sys.stdout.isatty() and "NO_COLOR" not in os.environ \
        and os.environ.get("TERM") != "dumb"


def table(statuses: list[Status], colour: bool = False) -> str:
    header = ["NAME", "HEALTH", *(title for title, _ in UNIT_COLUMNS), "BACKEND", "TAILNET",
              "IPS", "PEERS", "KEY EXPIRY", "LISTEN", "CONNS", "UP/DOWN", "PROBLEM"]
    rows = [header] + [row(status) for status in statuses]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    lines = []
    for number, cells in enumerate(rows):
        padded = [cell.ljust(width) for cell, width in zip(cells, widths, strict=False)]
        if colour and number > 0:
            healthy = statuses[number - 1].healthy
            padded[1] = f"{GREEN if healthy else RED}{padded[1]}{RESET}"
        lines.append("  ".join([*padded, cells[-1]]).rstrip())
    return "\n".join(lines)


def row(status: Status) -> list[str]:
    units = [SHORT.get(status.units.get(role, "?"), status.units.get(role, "?"))
             for _, role in UNIT_COLUMNS]
    if not status.dns_listen:
        units[4] = "off"
    peers = (f"{status.peers_online}/{status.peers_total}"
             if status.peers_total is not None else "-")
    expiry = status.key_expiry[:10] if status.key_expiry else "-"
    conns = (f"{status.connections}/{status.connections_total}"
             if status.connections is not None else "-")
    traffic = (f"{size(status.bytes_up)}/{size(status.bytes_down)}"
               if status.bytes_up is not None and status.bytes_down is not None else "-")
    problem = status.problem or (status.health[0] if status.health else "-")
    return [status.name, "ok" if status.healthy else "UNHEALTHY", *units,
            status.backend_state or "-", status.tailnet or "-", ",".join(status.ips) or "-",
            peers, expiry, status.listen or "-", conns, traffic, problem]


def size(count: int) -> str:
    """Bytes for people: 0, 999, 1.5k, 12M, 3.4G (powers of 1000, as ss and curl print)."""
    value = float(count)
    for unit in ("", "k", "M", "G", "T"):
        if value < 1000 or unit == "T":
            return f"{value:.0f}{unit}" if unit == "" or value >= 10 else f"{value:.1f}{unit}"
        value /= 1000
    return str(count)
