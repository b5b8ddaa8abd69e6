"""`GET /metrics` on the proxy's port: Prometheus' text exposition (version 0.0.4) of one
instance, made when scraped, never on a connection's path.

- the proxy's counters: connections ended by outcome (the log line's kinds), open
  connections and tunnels, bytes each way, the start time, and histograms of handshake and
  dial latency;
- tailscaled's state from its LocalAPI status: whether it answers, BackendState, peers
  online and in all, seconds until the node key expires;
- tailscaled's own client metrics (LocalAPI usermetrics, tailscaled >= 1.78), relayed with
  the instance's label added to each sample;
- the DNS responder's queries by type and RCODE, read from the file it writes (dns/counts.py):
  the instance's own, and apart from them those for names in no tailnet's zone, which are the
  responder's and the same on every instance (so sums over the instances' queries stay
  true). No file, or not one the responder wrote: no DNS families, the rest as ever.

Every sample carries `tsproxy_instance="NAME"`, so one Prometheus can scrape every tailnet of
a gateway (each proxy port serves its own instance).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from tsproxy_generator.vocabulary import DNS_COUNTS

from .localapi import LocalAPI, LocalAPIError, key_expiry, peer_counts
from .proxy.stats import Histogram, Stats

LABEL = "tsproxy_instance"
# A sample line of the text format: the name, its labels if any, the value and timestamp.
SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?"
                    r"( [-+]?(?:[0-9][0-9.eE+-]*|Inf|NaN)(?: -?[0-9]+)?)")


def label_value(text: str) -> str:
    """A label value as the text format quotes it."""
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Family:
    """One metric: its HELP and TYPE lines, then its samples."""

    def __init__(self, name: str, kind: str, help_text: str, instance: str) -> None:
        self.lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        self.name, self.instance = name, instance

    def add(self, value: float, suffix: str = "", **labels: str) -> Family:
        pairs = [(LABEL, self.instance), *sorted(labels.items())]
        text = ",".join(f'{key}="{label_value(value_)}"' for key, value_ in pairs)
        self.lines.append(f"{self.name}{suffix}{{{text}}} {value!r}")
        return self

    def histogram(self, observed: Histogram) -> Family:
        for bound, count in observed.cumulative():
            self.add(count, "_bucket", le="+Inf" if bound == float("inf") else repr(bound))
        return self.add(observed.sum, "_sum").add(observed.cumulative()[-1][1], "_count")


def proxy_families(stats: Stats) -> list[Family]:
    name = stats.name
    ended = Family("tsproxy_connections_total", "counter",
                   "Connections (and UDP associations) ended, by outcome as the log says it.",
                   name)
    for outcome, count in sorted(stats.ended.items()):
        ended.add(count, outcome=outcome)
    traffic = Family("tsproxy_bytes_total", "counter",
                     "Bytes relayed by ended connections, up (client to target) and down.", name)
    return [
        ended,
        Family("tsproxy_connections_open", "gauge", "Connections open now, handshakes included.",
               name).add(stats.active),
        Family("tsproxy_tunnels_open", "gauge", "Of those, tunnels relaying.",
               name).add(stats.tunnels),
        traffic.add(stats.bytes_up, direction="up").add(stats.bytes_down, direction="down"),
        Family("tsproxy_start_time_seconds", "gauge", "When the proxy started (Unix time).",
               name).add(stats.started),
        Family("tsproxy_handshake_seconds", "histogram",
               "From accepting a connection to its complete SOCKS5 or HTTP request.",
               name).histogram(stats.handshakes),
        Family("tsproxy_dial_seconds", "histogram",
               "From starting a dial into the tailnet to its verdict, connected or not.",
               name).histogram(stats.dials),
    ]


def tailscaled_families(name: str, status: dict[str, Any] | None,
                        now: float | None = None) -> list[Family]:
    """From the LocalAPI's status; None: tailscaled did not answer."""
    up = Family("tsproxy_tailscaled_up", "gauge",
                "Whether the instance's tailscaled answered its LocalAPI.", name)
    if status is None:
        return [up.add(0)]
    total, online = peer_counts(status)
    state = Family("tsproxy_tailscaled_backend_state", "gauge",
                   "tailscaled's BackendState (1 for the current one).", name)
    families = [
        up.add(1),
        state.add(1, state=str(status.get("BackendState") or "unknown")),
        Family("tsproxy_tailscaled_peers", "gauge", "Peers in the tailnet's netmap.",
               name).add(total),
        Family("tsproxy_tailscaled_peers_online", "gauge", "Of those, online now.",
               name).add(online),
    ]
    expiry = key_expiry(status)
    if expiry:
        left = _seconds(expiry) - (time.time() if now is None else now)
        families.append(Family("tsproxy_tailscaled_key_expiry_seconds", "gauge",
                               "Seconds until the node key expires (absent: never).",
                               name).add(round(left)))
    return families


def dns_families(name: str, path: str = DNS_COUNTS) -> list[Family]:
    """The DNS responder's counters for instance `name`, from its file at `path`."""
    try:
        with open(path, encoding="utf-8") as file:
            counts = json.load(file)
        started = counts["started"]
        if not isinstance(started, int | float) or isinstance(started, bool):
            raise ValueError("started")
        ours = _by_type(counts["queries"].get(name, {}))
        outside = _by_type(counts["outside"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []  # not running, an older responder, or no file of its: nothing to tell
    queries = Family("tsproxy_dns_queries_total", "counter",
                     "DNS queries answered for the instance's names, by type and RCODE.", name)
    strays = Family("tsproxy_dns_outside_queries_total", "counter",
                    "DNS queries for names in no tailnet's zone and messages without a usable "
                    "question, by type and RCODE: the responder's, the same on every instance.",
                    name)
    for family, samples in ((queries, ours), (strays, outside)):
        for qtype, rcode, count in samples:
            family.add(count, type=qtype, rcode=rcode)
    return [queries, strays,
            Family("tsproxy_dns_start_time_seconds", "gauge",
                   "When the DNS responder started (Unix time): its counters start there.",
                   name).add(started)]


def _by_type(table: object) -> list[tuple[str, str, int]]:
    """{TYPE: {RCODE: count}} as (type, rcode, count); ValueError unless it is that."""
    if not isinstance(table, dict):
        raise ValueError("not a table")
    samples = []
    for qtype, rcodes in sorted(table.items()):
        if not isinstance(rcodes, dict):
            raise ValueError(qtype)
        for rcode, count in sorted(rcodes.items()):
            if not isinstance(count, int) or isinstance(count, bool) or count < 0:
                raise ValueError(rcode)
            samples.append((qtype, rcode, count))
    return samples


def _seconds(rfc3339: str) -> float:
    # Go writes 2027-02-23T10:00:00Z, maybe with fractions; Python 3.11 reads both.
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


def relayed(name: str, text: str) -> list[str]:
    """tailscaled's own exposition with the instance's label added to every sample; lines
    the format does not know are dropped rather than passed on broken."""
    lines = []
    for line in text.splitlines():
        if line.startswith(("# HELP ", "# TYPE ")):
            lines.append(line)
            continue
        match = SAMPLE.fullmatch(line)
        if match is None:
            continue
        metric, labels, rest = match.groups()
        ours = f'{LABEL}="{label_value(name)}"'
        lines.append(f"{metric}{{{ours}{',' + labels if labels else ''}}}{rest}")
    return lines


def render(families: Iterable[Family], extra: Iterable[str] = ()) -> str:
    return "\n".join([*(line for family in families for line in family.lines), *extra]) + "\n"


async def scrape(stats: Stats, api: LocalAPI, dns_counts: str = DNS_COUNTS) -> str:
    """Everything /metrics shows, asked of tailscaled and read from the DNS responder's
    file (at `dns_counts`) now."""
    try:
        status: dict[str, Any] | None = await api.status()
    except LocalAPIError:
        status = None
    extra: list[str] = []
    if status is not None:
        try:
            code, body = await api.get("usermetrics")
        except LocalAPIError:
            code, body = 0, b""
        if code == 200:  # older tailscaled: 404, and only tsproxy's own metrics
            extra = relayed(stats.name, body.decode("utf-8", "replace"))
    return render([*proxy_families(stats), *tailscaled_families(stats.name, status),
                   *dns_families(stats.name, dns_counts)], extra)
