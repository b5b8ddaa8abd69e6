"""Every name form and every bad message -> the exact answer or RCODE, from both paths."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import dnslib  # type: ignore[import-untyped]
import pytest
from dns_harness import DNS, MANY, STATUS, ask, query, raw_query, responder, semantic
from fake_localapi import FakeLocalAPI, make_node, make_status

from tsproxy.dns.answer import Responder
from tsproxy.dns.zones import Zone, Zones
from tsproxy.localapi import LocalAPI
from tsproxy.names import STATUS_TTL, Resolver

pytestmark = pytest.mark.unit

SOA_FGPU = "fgpu.                   30      IN      SOA     fgpu. hostmaster.fgpu. 1 3600 600 86400 30"


@pytest.fixture
def fakes(tmp_path: Path) -> Iterator[tuple[FakeLocalAPI, FakeLocalAPI]]:
    with FakeLocalAPI(tmp_path / "fgpu.sock", STATUS, dns=DNS) as fgpu, \
            FakeLocalAPI(tmp_path / "work.sock", STATUS) as work:
        yield fgpu, work


@pytest.fixture
def dns(fakes: tuple[FakeLocalAPI, FakeLocalAPI]) -> Responder:
    return responder(Path(fakes[0].socket_path), Path(fakes[1].socket_path))


def answer(r: Responder, name: str, qtype: str | int = "A", **options: object) -> dnslib.DNSRecord:
    reply = ask(r, query(name, qtype, **options))  # type: ignore[arg-type]
    assert reply is not None
    return dnslib.DNSRecord.parse(reply)


def rcode(record: dnslib.DNSRecord) -> str:
    return str(dnslib.RCODE.get(record.header.rcode))


def data(record: dnslib.DNSRecord) -> list[str]:
    return [str(rr.rdata) for rr in record.rr]


@pytest.mark.parametrize("name, qtype, expected_rcode, expected", [
    ("10.100.10.141.fgpu", "A", "NOERROR", ["10.100.10.141"]),
    ("0.0.0.0.fgpu", "A", "NOERROR", ["0.0.0.0"]),
    ("255.255.255.255.fgpu.", "A", "NOERROR", ["255.255.255.255"]),
    ("10.100.10.141.FGPU", "A", "NOERROR", ["10.100.10.141"]),
    ("10.100.10.141.fgpu", "AAAA", "NOERROR", []),  # NODATA: the name has an A only
    ("10.100.10.141.fgpu", "MX", "NOERROR", []),
    ("10.100.10.141.fgpu", 65280, "NOERROR", []),  # a private-use type
    ("10.100.10.141.fgpu", "ANY", "NOERROR", ["10.100.10.141"]),
    ("fd7a-115c-a1e0--7.fgpu", "AAAA", "NOERROR", ["fd7a:115c:a1e0::7"]),
    ("fd7a-115c-a1e0--7.fgpu", "A", "NOERROR", []),
    ("1.2.3.4.work.example", "A", "NOERROR", ["1.2.3.4"]),
    # Empty non-terminals of the IP-embedded names: they exist, with no data (RFC 8020).
    ("1.2.3.fgpu", "A", "NOERROR", []),
    ("2.3.fgpu", "A", "NOERROR", []),
    ("141.fgpu", "A", "NOERROR", []),
    # Never a name: leading zeros (which address?), octets over 255, too many labels.
    ("010.100.10.141.fgpu", "A", "NXDOMAIN", []),
    ("256.1.2.3.fgpu", "A", "NXDOMAIN", []),
    ("1.2.3.4.5.fgpu", "A", "NXDOMAIN", []),
    ("a.b.fgpu", "A", "NXDOMAIN", []),
    ("fd7a-115c-a1e0---7.fgpu", "AAAA", "NXDOMAIN", []),  # no such peer either
    # The apex.
    ("fgpu", "A", "NOERROR", []),
    ("fgpu", "NS", "NOERROR", []),
    ("fgpu", "SOA", "NOERROR", ["fgpu. hostmaster.fgpu. 1 3600 600 86400 30"]),
    # Peers, from that tailnet's tailscaled.
    ("web.fgpu", "A", "NOERROR", ["100.64.0.42"]),
    ("WEB.fgpu", "AAAA", "NOERROR", ["fd7a:115c:a1e0::42"]),
    ("web.fgpu", "ANY", "NOERROR", ["100.64.0.42", "fd7a:115c:a1e0::42"]),
    ("v4only.fgpu", "AAAA", "NOERROR", []),
    ("web.fgpu", "MX", "NOERROR", []),
    ("nosuch.fgpu", "A", "NXDOMAIN", []),
    ("xn--bcher-kva.fgpu", "A", "NOERROR", ["100.64.0.51"]),  # IDNA A-labels are labels
    # The tailnet's own DNS, for the conf's dns_domains.
    ("host.corp.example", "A", "NOERROR", ["10.1.2.3"]),
    ("host.CORP.example", "AAAA", "NOERROR", []),
    ("txt.corp.example", "TXT", "NOERROR", ['"v=spf1 -all"']),
    ("nosuch.corp.example", "A", "NXDOMAIN", []),
    ("nosuch.corp.example", "TXT", "NXDOMAIN", []),
    ("servfail.corp.example", "A", "SERVFAIL", []),
    ("corp.example", "SOA", "NOERROR", ["corp.example. hostmaster.corp.example. 1 3600 600 86400 30"]),
    # Not ours: this is no open resolver.
    ("example.com", "A", "REFUSED", []),
    ("fgpu.example.com", "A", "REFUSED", []),
    ("xfgpu", "A", "REFUSED", []),
    ("example", "A", "REFUSED", []),
    ("10.1.2.3", "A", "REFUSED", []),
])
def test_names(dns: Responder, name: str, qtype: str | int, expected_rcode: str,
               expected: list[str]) -> None:
    record = answer(dns, name, qtype)
    assert rcode(record) == expected_rcode
    assert data(record) == expected
    assert record.header.ra == 0  # an authority, not a resolver
    ours = expected_rcode != "REFUSED"
    assert record.header.aa == (ours and expected_rcode != "SERVFAIL")
    negative = expected_rcode == "NXDOMAIN" or (expected_rcode == "NOERROR" and not expected)
    assert bool(record.auth) == negative
    if negative:
        apex = "corp.example" if "corp" in name.lower() else \
            "work.example" if "work" in name else "fgpu"
        assert [str(rr.rname) for rr in record.auth] == [apex + "."]
        assert record.auth[0].ttl == 30  # the SOA minimum: negative answers are cached briefly


def test_ttls_say_how_long_a_name_holds(dns: Responder) -> None:
    assert answer(dns, "10.0.0.1.fgpu").rr[0].ttl == 3600  # forever, really
    assert answer(dns, "web.fgpu").rr[0].ttl == 60  # peers come and go
    assert answer(dns, "host.corp.example").rr[0].ttl == 60


def test_question_and_owner_keep_the_clients_case(dns: Responder) -> None:
    """0x20 randomization (draft-vixie-dnsext-dns0x20): the reply echoes the exact bytes."""
    for name in ("10.0.0.1.FgPu", "10.0.0.1.fGpU", "WeB.fgpu"):
        record = answer(dns, name)
        assert record.q.qname.label == tuple(label.encode() for label in name.split("."))
        assert record.rr[0].rname.label == record.q.qname.label


def test_id_rd_and_cd_are_echoed(dns: Responder) -> None:
    for rd, cd in ((True, False), (False, True), (True, True)):
        record = answer(dns, "10.0.0.1.fgpu", qid=51966, rd=rd, cd=cd)
        assert (record.header.id, record.header.rd, record.header.get_cd()) == (51966, rd, cd)


def test_long_names(dns: Responder) -> None:
    def wire(labels: list[bytes]) -> bytes:
        return b"".join(bytes([len(label)]) + label for label in labels) + b"\0"

    fgpu = [b"fgpu"]
    longest = [b"a" * 63] * 3 + [b"b" * 56] + fgpu  # 255 bytes in wire form
    assert len(wire(longest)) == 255
    assert rcode(dnslib.DNSRecord.parse(ask(dns, raw_query(wire(longest))))) == "NXDOMAIN"
    too_long = [b"a" * 63] * 3 + [b"b" * 57] + fgpu
    assert rcode(dnslib.DNSRecord.parse(ask(dns, raw_query(wire(too_long))))) == "FORMERR"
    # 64 bytes: the length byte reads as an extended label type, which the message cannot have.
    assert rcode(dnslib.DNSRecord.parse(ask(dns, raw_query(wire([b"a" * 64, *fgpu]))))) \
        == "FORMERR"


@pytest.mark.parametrize("label", ["bücher".encode(), b"a.b", b"\x00", b"a b", b"-"])
def test_labels_that_no_name_has(dns: Responder, label: bytes) -> None:
    """Under our suffix, a label outside letters, digits, - and _ is no name (NXDOMAIN);
    a dot inside a label must not be read as two labels (a.b + .3.4 is no address)."""
    reply = ask(dns, raw_query(bytes([len(label)]) + label + b"\x013\x014\x04fgpu\0"))
    assert reply is not None
    assert rcode(dnslib.DNSRecord.parse(reply)) == "NXDOMAIN"


def test_labels_that_are_not_utf8(dns: Responder) -> None:
    """dnslib parses only UTF-8 labels; anything else is a FORMERR, never a traceback."""
    reply = ask(dns, raw_query(b"\x01\xff\x04fgpu\0"))
    assert reply is not None and rcode(dnslib.DNSRecord.parse(reply)) == "FORMERR"


def test_other_classes_are_refused(dns: Responder) -> None:
    assert rcode(answer(dns, "version.bind", "TXT", qclass=3)) == "REFUSED"  # CHAOS
    assert rcode(answer(dns, "10.0.0.1.fgpu", "A", qclass=3)) == "REFUSED"
    assert rcode(answer(dns, "10.0.0.1.fgpu", "A", qclass=255)) == "REFUSED"


@pytest.mark.parametrize("opcode, expected", [(1, "NOTIMP"), (2, "NOTIMP"), (4, "NOTIMP"),
                                               (5, "REFUSED"), (15, "NOTIMP")])
def test_opcodes_other_than_query(dns: Responder, opcode: int, expected: str) -> None:
    record = dnslib.DNSRecord.parse(ask(dns, query("10.0.0.1.fgpu", opcode=opcode)))
    assert (rcode(record), record.header.opcode, record.header.id) == (expected, opcode, 4660)


def test_messages_that_get_no_answer(dns: Responder) -> None:
    good = query("10.0.0.1.fgpu")
    assert ask(dns, b"") is None
    assert ask(dns, good[:11]) is None  # no whole header: not even an id to answer to
    response = bytes([good[0], good[1], good[2] | 0x80]) + good[3:]
    assert ask(dns, response) is None  # a response (QR): answering it could start a loop


@pytest.mark.parametrize("counts, tail", [
    ((0, 0, 0, 0), b""),
    ((2, 0, 0, 0), b"\x01x\x04fgpu\0\0\1\0\1"),
    ((65535, 0, 0, 0), b""),
    ((1, 0, 0, 0), b"\xc0"),  # trailing junk that starts a pointer
])
def test_question_counts(dns: Responder, counts: tuple[int, ...], tail: bytes) -> None:
    data_ = raw_query(b"\x0110\x010\x010\x011\x04fgpu\0", counts=counts, tail=tail)
    reply = ask(dns, data_)
    if counts == (1, 0, 0, 0):  # junk after a whole message is ignored, as dnslib does
        assert reply is not None
        return
    assert reply is not None and rcode(dnslib.DNSRecord.parse(reply)) == "FORMERR"
    assert reply[:2] == data_[:2] and reply[4:12] == bytes(8)


def test_compression_loops_and_truncation(dns: Responder) -> None:
    loop = raw_query(b"\xc0\x0c")  # the question's name points at itself
    assert rcode(dnslib.DNSRecord.parse(ask(dns, loop))) == "FORMERR"
    cut = query("10.0.0.1.fgpu")[:-3]
    assert rcode(dnslib.DNSRecord.parse(ask(dns, cut))) == "FORMERR"
    pointer_ahead = raw_query(b"\xc0\xff")
    assert rcode(dnslib.DNSRecord.parse(ask(dns, pointer_ahead))) == "FORMERR"


def test_edns(dns: Responder) -> None:
    record = answer(dns, "10.0.0.1.fgpu", edns=4096)
    assert [(rr.rtype, rr.rclass, rr.ttl) for rr in record.ar] == [(41, 1232, 0)]
    record = answer(dns, "10.0.0.1.fgpu", edns=65535)  # absurd: we still send what we offer
    assert [(rr.rclass, rcode(record)) for rr in record.ar] == [(1232, "NOERROR")]
    assert answer(dns, "10.0.0.1.fgpu").ar == []  # no EDNS asked, none given


def test_edns_version_and_duplicates(dns: Responder) -> None:
    record = dnslib.DNSRecord.question("10.0.0.1.fgpu")
    record.add_ar(dnslib.EDNS0(udp_len=1232, version=1))
    reply = dnslib.DNSRecord.parse(ask(dns, bytes(record.pack())))
    # BADVERS is 16: 0 in the header, 1 in the OPT record's extended RCODE (RFC 6891 6.1.3).
    assert (reply.header.rcode, reply.ar[0].ttl >> 24, reply.rr) == (0, 1, [])
    twice = dnslib.DNSRecord.question("10.0.0.1.fgpu")
    twice.add_ar(dnslib.EDNS0(udp_len=1232))
    twice.add_ar(dnslib.EDNS0(udp_len=1232))
    assert rcode(dnslib.DNSRecord.parse(ask(dns, bytes(twice.pack())))) == "FORMERR"


def test_edns_options_are_ignored(dns: Responder) -> None:
    """dig sends a COOKIE option; a server that does not do cookies ignores it (RFC 7873)."""
    record = dnslib.DNSRecord.question("10.0.0.1.fgpu")
    record.add_ar(dnslib.EDNS0(udp_len=1232, opts=[dnslib.EDNSOption(10, b"12345678")]))
    reply = dnslib.DNSRecord.parse(ask(dns, bytes(record.pack())))
    assert data(reply) == ["10.0.0.1"]


def test_big_answers_are_truncated_over_udp_only(dns: Responder) -> None:
    for edns in (None, 100, 512, 1232, 4096):
        reply = ask(dns, query("many.corp.example", edns=edns))
        assert reply is not None and len(reply) <= max(512, min(edns or 512, 1232))
        record = dnslib.DNSRecord.parse(reply)
        assert (record.header.tc, record.rr) == (1, [])
    reply = ask(dns, query("many.corp.example"), udp=False)
    assert reply is not None
    assert sorted(data(dnslib.DNSRecord.parse(reply))) == sorted(MANY)


def test_tailscaled_down(fakes: tuple[FakeLocalAPI, FakeLocalAPI], dns: Responder) -> None:
    fakes[0].stop()
    started = time.monotonic()
    record = answer(dns, "web.fgpu")
    assert (rcode(record), record.header.aa) == ("SERVFAIL", 0)
    assert time.monotonic() - started < 1  # fast: no socket means no waiting
    assert data(answer(dns, "10.0.0.1.fgpu")) == ["10.0.0.1"]
    assert rcode(answer(dns, "nosuch.work.example")) == "NXDOMAIN"  # the other tailnet is fine


def test_tailscaled_wedged(fakes: tuple[FakeLocalAPI, FakeLocalAPI]) -> None:
    dns = responder(Path(fakes[0].socket_path), Path(fakes[1].socket_path), timeout=0.3)
    fakes[0].slow = True
    started = time.monotonic()
    assert rcode(answer(dns, "web.fgpu")) == "SERVFAIL"
    assert 0.25 < time.monotonic() - started < 2
    started = time.monotonic()
    assert data(answer(dns, "10.0.0.1.fgpu")) == ["10.0.0.1"]
    assert time.monotonic() - started < 0.1


def test_semantic_sees_every_difference(dns: Responder) -> None:
    """The fast/full comparison must be able to fail."""
    a = dns.answer_now(query("10.0.0.1.fgpu"))
    b = dns.answer_now(query("10.0.0.2.fgpu"))
    c = dns.answer_now(query("10.0.0.1.fgpu", rd=False))
    assert a is not None and b is not None and c is not None
    assert semantic(a) != semantic(b) and semantic(a) != semantic(c)


def test_peers_take_the_fast_path_only_while_the_status_is_fresh(
        fakes: tuple[FakeLocalAPI, FakeLocalAPI]) -> None:
    dns = responder(Path(fakes[0].socket_path), Path(fakes[1].socket_path))
    assert dns.answer_now(query("web.fgpu")) is None  # nothing known yet: ask tailscaled
    answer(dns, "web.fgpu")  # the full path fetches the status (and `ask` compares)
    for name, expected in (("web.fgpu", ["100.64.0.42"]), ("nosuch.fgpu", []),
                           ("141.fgpu", [])):
        reply = dns.answer_now(query(name))
        assert reply is not None
        assert data(dnslib.DNSRecord.parse(reply)) == expected
    requests = fakes[0].count("status")
    for _ in range(100):
        dns.answer_now(query("web.fgpu"))
    assert fakes[0].count("status") == requests


def test_fast_peer_answers_last_as_long_as_their_status(tmp_path: Path) -> None:
    """Remembered per status: a peer that moves or joins is answered anew after the next
    fetch, and nothing is answered from a stale status."""
    now = [0.0]
    with FakeLocalAPI(tmp_path / "fgpu.sock", STATUS) as fake:
        resolver = Resolver("fgpu", LocalAPI(fake.socket_path), clock=lambda: now[0])
        dns = Responder(Zones([Zone("fgpu", "fgpu", (), resolver)]))

        def fast(name: str) -> tuple[str, list[str]]:
            reply = dns.answer_now(query(name))
            assert reply is not None
            record = dnslib.DNSRecord.parse(reply)
            return rcode(record), data(record)

        answer(dns, "web.fgpu")  # fetches the status
        for _ in range(2):  # built, then remembered
            assert fast("web.fgpu") == ("NOERROR", ["100.64.0.42"])
            assert fast("newcomer.fgpu") == ("NXDOMAIN", [])
        fake.status = make_status("gw", ["100.64.0.1"], peers=[
            make_node("web", ["100.64.0.99"]), make_node("newcomer", ["100.64.0.7"])])
        assert fast("web.fgpu") == ("NOERROR", ["100.64.0.42"])  # the status is still fresh
        now[0] += STATUS_TTL
        assert dns.answer_now(query("web.fgpu")) is None  # stale: tailscaled is asked
        assert dns.answer_now(query("newcomer.fgpu")) is None
        answer(dns, "web.fgpu")
        assert fast("web.fgpu") == ("NOERROR", ["100.64.0.99"])
        assert fast("newcomer.fgpu") == ("NOERROR", ["100.64.0.7"])
        answer(dns, "newcomer.fgpu")  # and the full path agrees (`ask` compares)
