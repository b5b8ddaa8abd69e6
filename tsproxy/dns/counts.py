"""What the responder counts: the queries it answered, by the instance whose zone the name
fell in, the question's type and the answer's RCODE.

The counts go to a small JSON file in the responder's RuntimeDirectory
(vocabulary.DNS_COUNTS), rewritten every few seconds while they change, as the proxy's
stats.json is (proxy/stats.py's StatsFile); each proxy's /metrics reads it when scraped and
shows its own instance's counts. Names in no zone, and messages without a question to read,
count under OUTSIDE: they belong to no instance.

Counting costs the fast path one increment per query and no lookup: each counter is a
mutable Tally, looked up once when a reply is built and remembered beside the reply. (A dict
increment by a (instance, type, rcode) key hashes the tuple twice: measurably more.)
"""

from __future__ import annotations

import os
import time
from typing import Any

from .protocol import BADVERS, FORMERR, NOERROR, NOTIMP, NXDOMAIN, REFUSED, SERVFAIL

OUTSIDE = ""  # the instance of a name in no zone, or of a message with no usable question
NO_TYPE = "none"  # the type of a message whose one question could not be read
OTHER_TYPE = "other"  # a type without a name: 65536 of them must not mean 65536 counters
RCODES = {NOERROR: "NOERROR", FORMERR: "FORMERR", SERVFAIL: "SERVFAIL", NXDOMAIN: "NXDOMAIN",
          NOTIMP: "NOTIMP", REFUSED: "REFUSED", BADVERS: "BADVERS"}

Key = tuple[str, str, str]  # instance (OUTSIDE: none), type, RCODE, as the file spells them
Tally = list[int]  # one counter: [count]


class QueryCounts:
    """The responder's counters, shared by every Responder it swaps in on a reload."""

    def __init__(self) -> None:
        self.started = time.time()
        self.tallies: dict[Key, Tally] = {}  # never emptied: replies hold on to their Tally

    def tally(self, instance: str, qtype: str, rcode: int) -> Tally:
        """The counter of such queries, made when first asked for: add to its [0]."""
        key = instance, qtype, RCODES.get(rcode, str(rcode))
        if (found := self.tallies.get(key)) is None:
            found = self.tallies[key] = [0]
        return found

    def count(self, instance: str, qtype: str, rcode: int) -> None:
        self.tally(instance, qtype, rcode)[0] += 1

    def counted(self) -> dict[Key, int]:
        """Every counter above 0."""
        return {key: tally[0] for key, tally in self.tallies.items() if tally[0]}

    @property
    def changes(self) -> int:
        """What StatsFile compares to skip an unchanged write: every query adds one."""
        return sum(tally[0] for tally in self.tallies.values())

    def snapshot(self) -> dict[str, Any]:
        """{"queries": {INSTANCE: {TYPE: {RCODE: n}}}, "outside": {TYPE: {RCODE: n}}, ...}"""
        queries: dict[str, dict[str, dict[str, int]]] = {}
        for (instance, qtype, rcode), count in sorted(self.counted().items()):
            queries.setdefault(instance, {}).setdefault(qtype, {})[rcode] = count
        return {"pid": os.getpid(), "started": round(self.started, 3),
                "updated": round(time.time(), 3),
                "outside": queries.pop(OUTSIDE, {}), "queries": queries}
