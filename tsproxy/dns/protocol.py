"""DNS numbers and the one SOA both answer paths give: fast.py builds its wire bytes by hand,
answer.py builds the same record with dnslib, and a corpus test holds the two alike.
"""

from __future__ import annotations

import struct

# IP-embedded names mean the same address forever; peers come and go.
TTL_EMBEDDED = 3600
TTL_PEER = 60
# SOA minimum: how long a resolver may remember "no such name" (RFC 2308).
NEGATIVE_TTL = 30
SOA_TIMERS = (1, 3600, 600, 86400, NEGATIVE_TTL)  # serial, refresh, retry, expire, minimum
# RFC 1035 4.2.1 lets a UDP answer be 512 bytes; with EDNS we offer what DNS Flag Day 2020
# settled on, which fits an unfragmented packet on any path.
UDP_PAYLOAD = 1232
MAX_NAME, MAX_LABEL = 255, 63  # RFC 1035 2.3.4, in wire form

TYPE_A, TYPE_SOA, TYPE_AAAA, TYPE_OPT, CLASS_IN = 1, 6, 28, 41, 1
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
BADVERS = 16  # an extended RCODE: its upper 8 bits travel in the OPT record
OPCODE_QUERY, OPCODE_UPDATE = 0, 5
# The header's flag bytes: QR, OPCODE, AA, RD in the first; CD and RCODE in the second.
FLAG_QR, FLAG_OPCODE, FLAG_AA, FLAG_RD, FLAG_CD = 0x80, 0x78, 0x04, 0x01, 0x10


def soa_names(apex: str) -> tuple[str, str]:
    """The SOA's MNAME and RNAME for a zone at ``apex`` (no trailing dot): the zone itself,
    and hostmaster there. Its owner is the apex, its TTL NEGATIVE_TTL, its timers SOA_TIMERS."""
    return apex, f"hostmaster.{apex}"


def wire_name(name: str) -> bytes:
    """``a.b`` in DNS wire form, uncompressed."""
    return b"".join(bytes([len(label)]) + label.encode("ascii")
                    for label in name.split(".") if label) + b"\0"


def soa_record(apex: str) -> bytes:
    """The SOA record for negative answers, owner and all, ready to append (RFC 2308 3)."""
    owner = wire_name(apex)
    rdata = b"".join(wire_name(name) for name in soa_names(apex)) + \
        struct.pack("!5I", *SOA_TIMERS)
    return owner + struct.pack("!HHIH", TYPE_SOA, CLASS_IN, NEGATIVE_TTL, len(rdata)) + rdata
