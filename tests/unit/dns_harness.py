"""Shared by the DNS unit tests: a responder over fake tailscaleds, queries built with dnslib,
and the check that the fast path and the full path give the same answer."""

from __future__ import annotations

import asyncio
import struct
import sys
from pathlib import Path

import dnslib  # type: ignore[import-untyped]

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the fake lives there

from fake_localapi import make_node, make_status

from tsproxy.dns.answer import Responder
from tsproxy.dns.zones import Zone, Zones
from tsproxy.localapi import LocalAPI
from tsproxy.names import Resolver

PEERS = [
    make_node("web", ["100.64.0.42", "fd7a:115c:a1e0::42"]),
    make_node("v4only", ["100.64.0.43"]),
    make_node("xn--bcher-kva", ["100.64.0.51"]),
]
STATUS = make_status("gw", ["100.64.0.1"], peers=PEERS)
MANY = [f"192.0.2.{n}" for n in range(1, 101)]  # 100 A records: over any UDP size we offer
DNS = {"host.corp.example": ["10.1.2.3"], "servfail.corp.example": "SERVFAIL",
       "txt.corp.example": ["txt:v=spf1 -all"], "many.corp.example": MANY}


def responder(fgpu_socket: Path, work_socket: Path, timeout: float = 2.0) -> Responder:
    """fgpu (suffix fgpu, dns_domains corp.example) and work (suffix work.example)."""
    def zone(name: str, suffix: str, domains: tuple[str, ...], sock: Path) -> Zone:
        return Zone(name, suffix, domains, Resolver(suffix, LocalAPI(str(sock), timeout=5)))
    return Responder(Zones([zone("fgpu", "fgpu", ("corp.example",), fgpu_socket),
                            zone("work", "work.example", (), work_socket)]), timeout)


def query(name: str, qtype: str | int = "A", *, edns: int | None = None, rd: bool = True,
          cd: bool = False, qclass: int = 1, qid: int = 4660, opcode: int = 0) -> bytes:
    record = dnslib.DNSRecord(dnslib.DNSHeader(id=qid, rd=int(rd), opcode=opcode),
                              q=dnslib.DNSQuestion(name, getattr(dnslib.QTYPE, qtype)
                                                   if isinstance(qtype, str) else qtype, qclass))
    if cd:
        record.header.cd = 1
    if edns is not None:
        record.add_ar(dnslib.EDNS0(udp_len=edns))
    return bytes(record.pack())


def raw_query(name_wire: bytes, qtype: int = 1, flags: int = 0x0100, counts: tuple[int, ...] = (
        1, 0, 0, 0), tail: bytes = b"", qid: int = 4660) -> bytes:
    """A query built byte by byte, for what dnslib will not build."""
    return struct.pack("!HH4H", qid, flags, *counts) + name_wire + struct.pack("!HH", qtype, 1) \
        + tail


def semantic(reply: bytes) -> tuple[object, ...]:
    """What a client sees of a reply: header bits and every record as text."""
    record = dnslib.DNSRecord.parse(reply)
    h = record.header
    return ((h.id, h.qr, h.opcode, h.aa, h.tc, h.rd, h.ra, h.get_cd(), h.rcode),
            [(q.qname.label, q.qtype, q.qclass) for q in record.questions],
            [str(rr) for rr in record.rr], [str(rr) for rr in record.auth],
            [str(rr) for rr in record.ar])


def ask(r: Responder, data: bytes, udp: bool = True) -> bytes | None:
    """The full path's reply; when the fast path answers too, it must say the same."""
    slow = asyncio.run(r.answer(data, udp=udp))
    fast = r.answer_now(data)
    if fast is not None:
        assert slow is not None
        assert semantic(fast) == semantic(slow), data
    return slow
