"""What the responder counts: the queries it answered, by the instance whose zone the name
fell in, the question's type and the answer's RCODE.

The counts go to a small JSON file in the responder's RuntimeDirectory
(vocabulary.DNS_COUNTS), rewritten every few seconds while they change, as the proxy's
stats.json is (proxy/stats.py's StatsFile); each proxy's /metrics reads it when scraped and
shows its own instance's counts. Names in no zone, and messages without a question to read,
count under OUTSIDE: they belong to no instance.

Counting costs the fast path one dict increment per query: the key is built once, when a
reply is, and remembered beside it.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from typing import Any

from .protocol import BADVERS, FORMERR, NOERROR, NOTIMP, NXDOMAIN, REFUSED, SERVFAIL

OUTSIDE = ""  # the instance of a name in no zone, or of a message with no usable question
NO_TYPE = "none"  # the type of a message whose one question could not be read
OTHER_TYPE = "other"  # a type without a name: 65536 of them must not mean 65536 counters
RCODES = {NOERROR: "NOERROR", FORMERR: "FORMERR", SERVFAIL: "SERVFAIL", NXDOMAIN: "NXDOMAIN",
          NOTIMP: "NOTIMP", REFUSED: "REFUSED", BADVERS: "BADVERS"}

Key = tuple[str, str, str]  # instance (OUTSIDE: none), type, RCODE, as the file spells them


def key(instance: str, qtype: str, rcode: int) -> Key:
    return instance, qtype, RCODES.get(rcode, str(rcode))


class QueryCounts:
    """The responder's counters, shared by every Responder it swaps in on a reload."""

    def __init__(self) -> None:
        self.started = time.time()
        self.counts: defaultdict[Key, int] = defaultdict(int)

    @property
    def changes(self) -> int:
        """What StatsFile compares to skip an unchanged write: every query adds one."""
        return sum(self.counts.values())

    def snapshot(self) -> dict[str, Any]:
        """{"queries": {INSTANCE: {TYPE: {RCODE: n}}}, "outside": {TYPE: {RCODE: n}}, ...}"""
        queries: dict[str, dict[str, dict[str, int]]] = {}
        for (instance, qtype, rcode), count in sorted(self.counts.items()):
            queries.setdefault(instance, {}).setdefault(qtype, {})[rcode] = count
        return {"pid": os.getpid(), "started": round(self.started, 3),
                "updated": round(time.time(), 3),
                "outside": queries.pop(OUTSIDE, {}), "queries": queries}
