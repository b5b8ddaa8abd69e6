"""Every DNS message gets its RFC-correct answer here (dnslib for the wire format).

For the zones of zones.py, as an authoritative server that is not a resolver (RA clear):

- a name in no zone, or a class other than IN: REFUSED (this is not an open resolver);
- ``A.B.C.D.SUFFIX`` and the IPv6 form (names.py): the address, TTL 1 hour; the other
  family: NODATA; ``host.SUFFIX`` and names under a conf's dns_domains: what that tailnet's
  tailscaled says, TTL 1 minute; SERVFAIL when it cannot say within QUERY_TIMEOUT;
- no such name: NXDOMAIN, and every negative answer carries the zone's SOA (RFC 2308);
  ``141.fgpu``, ``10.141.fgpu`` ... are empty non-terminals (zones.empty_non_terminal);
- other types: the apex has its SOA, IP-embedded and peer names have only addresses (NODATA);
  under dns_domains, tailscaled is asked for the type itself;
- not a query: OPCODE UPDATE is REFUSED, other opcodes NOTIMP, a message that does not parse
  or does not ask exactly one question FORMERR (RFC 9619), a response (QR set) or a header
  under 12 bytes no answer at all. dnslib parses only UTF-8 labels: other bytes are FORMERR;
- EDNS (RFC 6891): echoed with our payload size; version other than 0 is BADVERS, two OPT
  records FORMERR; over UDP an answer bigger than the client's payload size (512 without EDNS)
  is sent truncated (TC) so the client retries over TCP (RFC 7766).

Every answer counts one query (counts.py): under the instance whose zone the name is in, or
under OUTSIDE for a name in no zone and for a message that is no plain query.
"""

from __future__ import annotations

import asyncio

import dnslib  # type: ignore[import-untyped]

from ..localapi import LocalAPIError
from ..names import NameNotFound, ResolveError
from .counts import NO_TYPE, OTHER_TYPE, OUTSIDE, QueryCounts
from .fast import FastPath
from .protocol import (
    BADVERS,
    CLASS_IN,
    FLAG_CD,
    FLAG_OPCODE,
    FLAG_QR,
    FLAG_RD,
    FORMERR,
    MAX_LABEL,
    MAX_NAME,
    NEGATIVE_TTL,
    NOERROR,
    NOTIMP,
    NXDOMAIN,
    OPCODE_QUERY,
    OPCODE_UPDATE,
    REFUSED,
    SERVFAIL,
    SOA_TIMERS,
    TTL_EMBEDDED,
    TTL_PEER,
    UDP_PAYLOAD,
    soa_names,
)
from .zones import Apex, Zones, empty_non_terminal

QUERY_TIMEOUT = 2.0
Q = dnslib.QTYPE


class Responder:
    """Answers for ``zones``: :meth:`answer_now` when the fast path can, :meth:`answer` always."""

    def __init__(self, zones: Zones, timeout: float = QUERY_TIMEOUT,
                 counts: QueryCounts | None = None) -> None:
        self.zones = zones
        self.timeout = timeout
        self.counts = QueryCounts() if counts is None else counts
        self.answer_now = FastPath(zones, self.counts).answer

    async def answer(self, query: bytes, udp: bool = True) -> bytes | None:
        """The reply to ``query`` (None: send nothing). ``udp``: size-limit the reply."""
        if len(query) < 12 or query[2] & FLAG_QR:
            return None
        try:
            record = dnslib.DNSRecord.parse(query)
        except Exception:  # dnslib raises DNSError, and worse on some garbage
            return self._counted(error_reply(query, FORMERR), OUTSIDE, NO_TYPE, FORMERR)
        qtype = type_name(record.q.qtype) if len(record.questions) == 1 else NO_TYPE
        opcode = record.header.opcode
        if opcode != OPCODE_QUERY:
            rcode = REFUSED if opcode == OPCODE_UPDATE else NOTIMP
            return self._counted(error_reply(query, rcode), OUTSIDE, qtype, rcode)
        opts = [rr for rr in record.ar if rr.rtype == Q.OPT]
        if len(record.questions) != 1 or len(opts) > 1 or malformed(record.q.qname.label):
            return self._counted(error_reply(query, FORMERR), OUTSIDE, qtype, FORMERR)
        found = self._apex(record.q.qname.label) if record.q.qclass == CLASS_IN else None
        instance = OUTSIDE if found is None else found[0].zone.name
        reply = dnslib.DNSRecord(dnslib.DNSHeader(id=record.header.id, qr=1, rd=record.header.rd,
                                                  cd=record.header.get_cd()), q=record.q)
        limit = 65535
        if opts:
            if (opts[0].ttl >> 16) & 0xFF != 0:
                reply.add_ar(dnslib.EDNS0(udp_len=UDP_PAYLOAD, ext_rcode=BADVERS >> 4))
                return self._counted(bytes(reply.pack()), instance, qtype, BADVERS)
            reply.add_ar(dnslib.EDNS0(udp_len=UDP_PAYLOAD))
            if udp:
                limit = max(512, min(opts[0].rclass, UDP_PAYLOAD))
        elif udp:
            limit = 512
        await self._fill(reply, record.q, found)
        packed = bytes(reply.pack())
        if len(packed) > limit:
            reply.rr, reply.auth = [], []
            reply.header.tc = 1
            packed = bytes(reply.pack())
        return self._counted(packed, instance, qtype, reply.header.rcode)

    def _counted(self, reply: bytes, instance: str, qtype: str, rcode: int) -> bytes:
        self.counts.count(instance, qtype, rcode)
        return reply

    async def _fill(self, reply: dnslib.DNSRecord, question: dnslib.DNSQuestion,
                    found: tuple[Apex, tuple[bytes, ...]] | None) -> None:
        """The answer for a name in the zone `found` (None: in none, or not class IN)."""
        labels: tuple[bytes, ...] = question.qname.label
        if found is None:
            reply.header.rcode = REFUSED
            return
        apex, relative = found
        reply.header.aa = 1
        if not all(label.isascii() and b"." not in label for label in relative):
            self._negative(reply, apex, NXDOMAIN)
            return
        name = b".".join(labels).decode("ascii").lower()
        if not relative:
            if question.qtype in (Q.SOA, Q.ANY):
                reply.add_answer(soa(apex))
            else:
                self._negative(reply, apex, NOERROR)
            return
        try:
            async with asyncio.timeout(self.timeout):
                await self._records(reply, apex, name, question.qtype)
        except NameNotFound:
            exists = empty_non_terminal([label.decode().lower() for label in relative])
            self._negative(reply, apex, NOERROR if exists else NXDOMAIN)
        except (ResolveError, LocalAPIError, TimeoutError):
            reply.rr = []
            reply.header.aa = 0
            reply.header.rcode = SERVFAIL

    async def _records(self, reply: dnslib.DNSRecord, apex: Apex, name: str, qtype: int) -> None:
        resolver = apex.zone.resolver
        if qtype not in (Q.A, Q.AAAA, Q.ANY) and apex.name != apex.zone.suffix:
            await self._ask_for_type(reply, apex, name, qtype)
            return
        embedded = resolver.resolve_now(name)
        addresses = embedded if embedded is not None else await resolver.resolve(name)
        ttl = TTL_EMBEDDED if embedded is not None else TTL_PEER
        for address in addresses:
            rtype = Q.A if address.version == 4 else Q.AAAA
            if qtype in (rtype, Q.ANY):
                rdata = dnslib.A(str(address)) if rtype == Q.A else dnslib.AAAA(str(address))
                reply.add_answer(dnslib.RR(reply.q.qname, rtype, ttl=ttl, rdata=rdata))
        if not reply.rr:
            self._negative(reply, apex, NOERROR)

    async def _ask_for_type(self, reply: dnslib.DNSRecord, apex: Apex, name: str,
                            qtype: int) -> None:
        """A type other than addresses, under a dns_domain: the tailnet's DNS says."""
        raw = await apex.zone.resolver.api.dns_query(name, Q.get(qtype, str(qtype)))
        try:
            theirs = dnslib.DNSRecord.parse(raw)
        except Exception:
            raise LocalAPIError(apex.zone.resolver.api.socket_path,
                                "dns-query: the reply does not parse") from None
        if theirs.header.rcode not in (NOERROR, NXDOMAIN):
            raise LocalAPIError(apex.zone.resolver.api.socket_path,
                                f"dns-query: {dnslib.RCODE.get(theirs.header.rcode)}")
        if theirs.header.rcode == NXDOMAIN:
            raise NameNotFound(name)
        for rr in theirs.rr:
            reply.add_answer(rr)
        if not reply.rr:
            self._negative(reply, apex, NOERROR)

    def _apex(self, labels: tuple[bytes, ...]) -> tuple[Apex, tuple[bytes, ...]] | None:
        """The longest apex the name ends with, and the labels before it."""
        for start in range(len(labels)):
            tail = labels[start:]
            if all(label.isascii() and b"." not in label for label in tail):
                apex = self.zones.apexes.get(b".".join(tail).decode("ascii").lower())
                if apex is not None:
                    return apex, labels[:start]
        return None

    def _negative(self, reply: dnslib.DNSRecord, apex: Apex, rcode: int) -> None:
        reply.header.rcode = rcode
        reply.add_auth(soa(apex, NEGATIVE_TTL))


def type_name(qtype: int) -> str:
    """The type as counts.py counts it: its name, or OTHER_TYPE for one without a name."""
    name = Q.forward.get(qtype)
    return name if isinstance(name, str) else OTHER_TYPE


def malformed(labels: tuple[bytes, ...]) -> bool:
    """Over RFC 1035's sizes (which dnslib's parser lets through and its packer refuses)."""
    return any(len(label) > MAX_LABEL for label in labels) or \
        sum(len(label) + 1 for label in labels) + 1 > MAX_NAME


def soa(apex: Apex, ttl: int = NEGATIVE_TTL) -> dnslib.RR:
    """protocol.soa_record's record, built with dnslib."""
    mname, rname = soa_names(apex.name)
    return dnslib.RR(apex.name + ".", Q.SOA, ttl=ttl,
                     rdata=dnslib.SOA(mname + ".", rname + ".", SOA_TIMERS))


def error_reply(query: bytes, rcode: int) -> bytes:
    """A header-only reply: the query's id and opcode, RD and CD copied, no records."""
    flags = bytes((FLAG_QR | (query[2] & (FLAG_OPCODE | FLAG_RD)), (query[3] & FLAG_CD) | rcode))
    return query[:2] + flags + bytes(8)

