"""The responder process: zones from the confs, re-read whenever they change, until SIGTERM.

There is one responder for every tailnet, so a conf added, changed or removed must not need a
restart that would drop every tailnet's names for a moment: the conf directory is looked at
every CONF_POLL seconds (and at SIGHUP), and a change swaps in new zones between two queries.
A bad conf is skipped with its error line, as the generator skips it.

Under systemd (RuntimeDirectory=) the query counters go to queries.json there, for each
proxy's /metrics (counts.py); they outlive a reload, not a restart.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import Callable

from tsproxy_generator.addresses import endpoint
from tsproxy_generator.config import conf_paths
from tsproxy_generator.vocabulary import DNS_COUNTS

from ..activation import runtime_file
from ..instances import conf_dir, load_instances
from ..proxy.stats import StatsFile
from .answer import QUERY_TIMEOUT, Responder
from .counts import QueryCounts
from .server import DnsServer
from .zones import Zones

CONF_POLL = 2.0
# Seconds a stopping responder (SIGTERM: a restart on upgrade) gives the queries it has read:
# an answer that waits on a tailscaled takes at most QUERY_TIMEOUT.
DRAIN_GRACE = 5.0


def conf_signature(directory: str) -> tuple[tuple[str, int, int, int], ...]:
    """What changes when any conf does: names, inodes, sizes and modification times."""
    entries = []
    for path in conf_paths(directory):
        try:
            info = os.stat(path)
        except OSError:
            continue
        entries.append((path, info.st_ino, info.st_size, info.st_mtime_ns))
    return tuple(entries)


def load_zones(run_dir: str | None, log: Callable[[str], None]) -> Zones:
    confs, errors = load_instances()
    for error in errors:
        log(f"{error} (skipped)")
    zones = Zones.from_confs(confs, run_dir)
    served = ", ".join(f"{z.name}: " + " ".join((z.suffix, *z.domains)) for z in zones.zones)
    log(f"serving {served}" if served else "serving no names: no conf with DNS (dns_listen)")
    return zones


def describe(sockets: list[socket.socket]) -> str:
    kinds = {socket.SOCK_DGRAM: "udp", socket.SOCK_STREAM: "tcp"}
    return ", ".join(f"{kinds.get(s.type, '?')} {endpoint(*s.getsockname()[:2])}"
                     for s in sockets)


def run(sockets: list[socket.socket], run_dir: str | None = None,
        timeout: float = QUERY_TIMEOUT) -> int:
    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    directory = conf_dir()
    log(f"listening on {describe(sockets)}")
    signature = conf_signature(directory)
    counts = QueryCounts()
    server = DnsServer(sockets, Responder(load_zones(run_dir, log), timeout, counts), log)
    path = runtime_file(os.path.basename(DNS_COUNTS))  # where each /metrics reads them
    counts_file = StatsFile(counts, path) if path else None

    def reload() -> None:
        nonlocal signature
        signature = conf_signature(directory)
        server.responder = Responder(load_zones(run_dir, log), timeout, counts)

    async def watch() -> None:
        while True:
            await asyncio.sleep(CONF_POLL)
            if conf_signature(directory) != signature:
                reload()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGHUP, reload)
        tasks = [asyncio.ensure_future(server.serve()), asyncio.ensure_future(watch())]
        if counts_file is not None:
            tasks.append(asyncio.ensure_future(counts_file.run()))
        await stop.wait()
        await server.drain(DRAIN_GRACE)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())
    return 0
