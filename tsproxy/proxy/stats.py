"""What the proxy tells: one log line per connection, and counters in a small JSON file.

Log lines go to stderr, which systemd connects to the journal; lines from one turn of the
event loop leave in one write. The counters file is replaced atomically every few seconds
(readers never see half of it), for `tsproxy status` and monitoring.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import os
import time
from typing import Any, Protocol

WRITE_INTERVAL = 2.0
# Seconds: a handshake or a dial on a tailnet takes from well under a millisecond (a peer on
# a direct path) to the timeouts' 10 s (a client that never finishes, a peer that is gone).
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0)


def shown(text: str, limit: int = 80) -> str:
    """Client-supplied text as it may appear in a log line: plain when harmless, else
    repr() (control characters, spaces and quotes escaped) and capped."""
    if text and len(text) <= limit and text.isprintable() and " " not in text \
            and "'" not in text and '"' not in text:
        return text
    return repr(text[:limit])


class Record:
    """One connection, from accept to close."""

    __slots__ = ("address", "client", "command", "down", "identity", "kind", "outcome",
                 "protocol", "started", "target", "up", "user")

    def __init__(self, client: str, started: float) -> None:
        self.client = client  # "IP:PORT" ("[IPv6]:PORT")
        self.started = started
        self.protocol = "-"
        self.user: str | None = None
        self.identity: str | None = None
        self.command: str | None = None  # "udp": a SOCKS5 UDP ASSOCIATE
        self.target: str | None = None  # as the client asked: host:port
        self.address: str | None = None  # what was dialed
        self.up = self.down = 0
        self.kind = "error"  # the counter this connection ends up in
        self.outcome = "error"  # free text for the log line

    def end(self, kind: str, outcome: str) -> None:
        self.kind, self.outcome = kind, outcome

    def line(self, now: float) -> str:
        words = [f"client={self.client}", self.protocol]
        if self.user is not None:
            words.append(f"user={shown(self.user)}")
        if self.identity is not None:
            words.append(f"identity={shown(self.identity)}")
        if self.command is not None:
            words.append(self.command)
        if self.target is not None:
            words.append(f"to={self.target}")
        if self.address is not None:
            words.append(f"addr={self.address}")
        words += [f"up={self.up}", f"down={self.down}", f"time={now - self.started:.3f}s"]
        return f"{' '.join(words)}: {self.outcome}"


class Histogram:
    """Observations counted into fixed buckets, as Prometheus' histograms are: one bisect and
    two additions each, cheap enough for every connection."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations at or below it), ending with (inf, all of them)."""
        total, pairs = 0, []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            pairs.append((bound, total))
        return pairs


class Stats:
    """Counters of one proxy process."""

    def __init__(self, name: str, listen: str) -> None:
        self.name, self.listen = name, listen
        self.started = time.time()
        self.active = 0  # connections open now, handshakes included
        self.tunnels = 0  # of those, relaying
        self.total = 0
        self.bytes_up = self.bytes_down = 0
        self.ended: dict[str, int] = {}  # by kind: closed, reset, refused: ..., failed: ...
        self.datagrams_dropped: dict[str, int] = {}  # UDP ASSOCIATE's, by why
        self.handshakes = Histogram()  # accept to a complete request, seconds
        self.dials = Histogram()  # a dial's start to its verdict, connected or not
        self.changes = 0

    def opened(self) -> None:
        self.active += 1
        self.total += 1
        self.changes += 1

    def closed(self, record: Record) -> None:
        self.active -= 1
        self.bytes_up += record.up
        self.bytes_down += record.down
        self.ended[record.kind] = self.ended.get(record.kind, 0) + 1
        self.changes += 1

    def snapshot(self) -> dict[str, Any]:
        refused = {k[len("refused: "):]: v for k, v in self.ended.items()
                   if k.startswith("refused: ")}
        return {
            "name": self.name, "pid": os.getpid(), "listen": self.listen,
            "started": round(self.started, 3), "updated": round(time.time(), 3),
            "active": self.active, "tunnels": self.tunnels, "total": self.total,
            "bytes_up": self.bytes_up, "bytes_down": self.bytes_down,
            "refused": dict(sorted(refused.items())),
            "ended": dict(sorted(self.ended.items())),
            "datagrams_dropped": dict(sorted(self.datagrams_dropped.items())),
        }


def write_json(path: str, value: Any) -> None:
    """Replace `path` with `value` as JSON: readers never see half of it; OSError as is."""
    temporary = f"{path}.{os.getpid()}.tmp"
    try:
        with open(temporary, "w", encoding="utf-8") as file:
            json.dump(value, file, indent=1)
            file.write("\n")
        os.replace(temporary, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


class Counters(Protocol):
    """What StatsFile writes: Stats, or the DNS responder's QueryCounts."""

    @property
    def changes(self) -> int: ...

    def snapshot(self) -> dict[str, Any]: ...


class StatsFile:
    """Writes Stats (or other Counters) to `path` every WRITE_INTERVAL seconds while they
    change."""

    def __init__(self, stats: Counters, path: str) -> None:
        self.stats, self.path = stats, path
        self._written = -1

    def write(self) -> None:
        if self.stats.changes == self._written:
            return
        self._written = self.stats.changes
        write_json(self.path, self.stats.snapshot())

    async def run(self) -> None:
        while True:
            try:
                self.write()
            except OSError as error:
                # A full or read-only /run must not take the proxy down; say so and go on.
                log_line(f"cannot write {self.path}: {error.strerror}")
            await asyncio.sleep(WRITE_INTERVAL)


class Log:
    """Lines to stderr (the journal), batched per event-loop turn."""

    def __init__(self, fd: int = 2) -> None:
        self.fd = fd
        self._lines: list[str] = []

    def __call__(self, line: str) -> None:
        if not self._lines:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no loop: write at once
                self._lines.append(line)
                self.flush()
                return
        self._lines.append(line)

    def flush(self) -> None:
        data = ("\n".join(self._lines) + "\n").encode("utf-8", "replace")
        self._lines.clear()
        with contextlib.suppress(OSError):  # no stderr left: nothing to tell anyone
            while data:
                data = data[os.write(self.fd, data):]


log_line = Log()
