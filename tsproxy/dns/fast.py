"""The hot path: one question, class IN, type A or AAAA, for a name no daemon is asked for.

``10.100.10.141.fgpu`` means 10.100.10.141 and ``x.y.fgpu`` nothing, forever, so such answers
(addresses, NODATA, NXDOMAIN) are built here by hand in a few microseconds, and remembered by
the query's exact bytes but its ID (case included, so 0x20 randomization is echoed as sent):
a repeated query costs one lookup. Peer names (and single labels no peer has: NXDOMAIN) are
answered here too while the resolver's copy of tailscaled's status is fresh, and remembered
with the status they came from: a fetched status is a new object, so the next fetch forgets
them all at once.

Each answer counts one query (counts.py) in a counter looked up when the reply is built and
remembered beside it, so a repeated query costs one lookup and one increment.

Anything else, or anything unusual about the message (EDNS other than version 0, extra
records, compression in the question, trailing bytes), returns None and goes to answer.py,
which answers every message; a test holds the two to the same answers over a corpus, and the
fuzz tests feed this parser arbitrary bytes.
"""

from __future__ import annotations

import struct
from typing import TypeVar

from tsproxy_generator.addresses import Address

from ..names import NameNotFound, ResolveError, Resolver
from .counts import QueryCounts, Tally
from .protocol import (
    CLASS_IN,
    FLAG_AA,
    FLAG_CD,
    FLAG_QR,
    FLAG_RD,
    NOERROR,
    NXDOMAIN,
    TTL_EMBEDDED,
    TTL_PEER,
    TYPE_A,
    TYPE_AAAA,
    TYPE_OPT,
    UDP_PAYLOAD,
)
from .zones import Zones, empty_non_terminal

OPT_RECORD = b"\0" + struct.pack("!HHIH", TYPE_OPT, UDP_PAYLOAD, 0, 0)
CACHE_SIZE = 65536
T = TypeVar("T")

Answer = tuple[int, bytes, bytes]  # RCODE, counts, the rest of the reply
QTYPES = {TYPE_A: "A", TYPE_AAAA: "AAAA"}
# What a peer's answer was built from: it holds while that resolver's fresh status is this one.
Basis = tuple[Resolver, dict[str, object]]


class FastPath:
    """Answers that need no daemon, from ``zones``; None when answer.py must answer."""

    def __init__(self, zones: Zones, counts: QueryCounts) -> None:
        self.zones = zones
        self.counts = counts
        # The whole query but its ID -> the whole reply but its ID and the counter it adds
        # to: a repeated query costs one lookup. Answers that hold forever, and peers' with
        # their basis.
        self._replies: dict[bytes, tuple[bytes, Tally]] = {}
        self._peer_replies: dict[bytes, tuple[Basis, bytes, Tally]] = {}
        self._statuses: dict[Resolver, object] = {}  # the status each resolver's peers are from

    def answer(self, query: bytes) -> bytes | None:
        rest = query[2:]
        if (known := self._replies.get(rest)) is not None:
            reply, tally = known
            tally[0] += 1
            return query[:2] + reply
        if (peer := self._peer_replies.get(rest)) is not None:
            (resolver, status), reply, tally = peer
            if resolver.fresh_status() is status:
                tally[0] += 1
                return query[:2] + reply
        if len(query) < 17 or query[2] & 0xF8 or query[4:10] != b"\0\1\0\0\0\0":
            return None  # a response, an opcode other than QUERY, or not one lone question
        end = question_end(query)
        if end < 0:
            return None
        additional = query[10:12]
        if additional == b"\0\0":
            if end != len(query):
                return None
        elif additional != b"\0\1" or not plain_opt(query, end):
            return None
        if (built := self._build(query, end, additional == b"\0\1")) is None:
            return None
        basis, tally, (rcode, counts, body) = built
        flags = bytes((FLAG_QR | FLAG_AA | (query[2] & FLAG_RD), (query[3] & FLAG_CD) | rcode))
        reply = flags + counts + body
        if basis is None:
            remember(self._replies, rest, (reply, tally))
        else:
            self._remember_peer(rest, basis, reply, tally)
        tally[0] += 1
        return query[:2] + reply

    def _remember_peer(self, rest: bytes, basis: Basis, reply: bytes, tally: Tally) -> None:
        resolver, status = basis
        if self._statuses.get(resolver, status) is not status:
            # A newer status: what the older one said goes, so no old status stays referenced.
            self._peer_replies.clear()
        self._statuses[resolver] = status
        remember(self._peer_replies, rest, (basis, reply, tally))

    def _build(self, query: bytes, end: int,
               edns: bool) -> tuple[Basis | None, Tally, Answer] | None:
        """What the answer holds on (None: it holds forever), its counter, and the answer."""
        qtype = query[end - 4] << 8 | query[end - 3]
        if qtype not in (TYPE_A, TYPE_AAAA) or query[end - 2:end] != b"\0\1":
            return None
        name = question_name(query, end - 4)
        if name is None:
            return None
        apex = self.zones.find(name)
        if apex is None:
            return None
        rcode, ttl, basis = NOERROR, TTL_EMBEDDED, None
        relative = name[:-len(apex.name)].rstrip(".")
        addresses: list[Address] | None = []
        resolver = apex.zone.resolver
        try:
            if relative:
                addresses = resolver.resolve_now(name)
                if addresses is None:
                    # A peer, while tailscaled's status is fresh: true for that status only.
                    if (status := resolver.fresh_status()) is None:
                        return None
                    ttl, basis = TTL_PEER, (resolver, status)
                    addresses = resolver.peer_now(name)
        except NameNotFound:
            addresses = []
            if not empty_non_terminal(relative.split(".")):
                rcode = NXDOMAIN
        except ResolveError:
            return None
        if addresses is None:
            return None  # tailscaled must be asked
        version = 4 if qtype == TYPE_A else 6
        records = [b"\xc0\x0c" + struct.pack("!HHIH", qtype, CLASS_IN, ttl,
                                              len(a.packed)) + a.packed
                   for a in addresses if a.version == version]
        # No address (of that family): a negative answer, with the SOA (RFC 2308 2.2).
        authority = [] if records else [apex.soa]
        counts = struct.pack("!HHHH", 1, len(records), len(authority), int(edns))
        body = query[12:end] + b"".join(records + authority) + (OPT_RECORD if edns else b"")
        tally = self.counts.tally(apex.zone.name, QTYPES[qtype], rcode)
        return basis, tally, (rcode, counts, body)


def remember(cache: dict[bytes, T], key: bytes, value: T) -> None:
    if len(cache) >= CACHE_SIZE:
        cache.clear()  # a flood of distinct names costs a refill, never unbounded memory
    cache[key] = value


def question_end(query: bytes) -> int:
    """The offset after the question's type and class; -1 unless the name is plain labels
    (no compression, RFC 1035 sizes) with the four bytes after it present."""
    position = 12
    while True:
        if position >= len(query):
            return -1
        length = query[position]
        if length == 0:
            break
        if length > 63:
            return -1  # a pointer or an obsolete label type: not in a plain question
        position += 1 + length
    position += 1
    if position - 12 > 255 or position + 4 > len(query):
        return -1
    return position + 4


def question_name(query: bytes, end: int) -> str | None:
    """The question's name in lower case without the root, if it is ASCII without a dot
    inside a label (which text would misread as two labels)."""
    labels = []
    position = 12
    while position < end - 1:
        length = query[position]
        label = query[position + 1:position + 1 + length]
        if not label.isascii() or b"." in label:
            return None
        labels.append(label.decode("ascii").lower())
        position += 1 + length
    return ".".join(labels)


def plain_opt(query: bytes, start: int) -> bool:
    """Whether the message ends in exactly one OPT record, EDNS version 0 (RFC 6891 6.1).
    Its options (a cookie, say) are ignored, as RFC 6891 lets a server that knows none."""
    if len(query) < start + 11 or query[start:start + 3] != b"\0\0\x29":
        return False
    if query[start + 5:start + 7] != b"\0\0":  # extended RCODE and version both 0
        return False
    rdlength = query[start + 9] << 8 | query[start + 10]
    return start + 11 + rdlength == len(query)
