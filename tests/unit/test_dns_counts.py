"""The responder's query counters: what each answer counts, on both paths alike; the file it
writes; and that file read back by /metrics, held to promtool, with a bad file costing only
the DNS families."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from dns_harness import DNS, STATUS, query, raw_query, responder
from fake_localapi import FakeLocalAPI

from tsproxy import metrics
from tsproxy.dns.answer import Responder
from tsproxy.dns.counts import QueryCounts
from tsproxy.proxy.stats import Stats, StatsFile

pytestmark = pytest.mark.unit


def edns_version(data: bytes, version: int) -> bytes:
    """The query with its OPT record (the last, without options) saying `version`."""
    return data[:-5] + bytes([version]) + data[-4:]


# Queries, each with the counter it must land in: (instance, type, RCODE).
CORPUS = [
    (query("10.1.2.3.fgpu"), ("fgpu", "A", "NOERROR")),
    (query("10.1.2.3.fgpu", "AAAA"), ("fgpu", "AAAA", "NOERROR")),
    (query("a.b.fgpu", edns=1232), ("fgpu", "A", "NXDOMAIN")),
    (query("web.fgpu"), ("fgpu", "A", "NOERROR")),  # a peer: tailscaled is asked
    (query("nobody.fgpu"), ("fgpu", "A", "NXDOMAIN")),
    (query("fgpu", "SOA"), ("fgpu", "SOA", "NOERROR")),
    (query("txt.corp.example", "TXT"), ("fgpu", "TXT", "NOERROR")),
    (query("servfail.corp.example"), ("fgpu", "A", "SERVFAIL")),
    (query("1.2.3.4.work.example", 65280), ("work", "other", "NOERROR")),
    (edns_version(query("1.2.3.4.work.example", edns=1232), 1), ("work", "A", "BADVERS")),
    (query("example.com"), ("", "A", "REFUSED")),
    (query("10.1.2.3.fgpu", qclass=3), ("", "A", "REFUSED")),  # class CH: in no zone
    (query("10.1.2.3.fgpu", opcode=2), ("", "A", "NOTIMP")),
    (query("10.1.2.3.fgpu", opcode=5), ("", "A", "REFUSED")),  # UPDATE
    (raw_query(b"\3fgpu\0", counts=(2, 0, 0, 0), tail=b"\3fgpu\0\0\1\0\1"),
     ("", "none", "FORMERR")),
    (b"\x12\x34\x01\x00\x00\x01" + b"\xff" * 20, ("", "none", "FORMERR")),
]


@pytest.fixture
def fakes(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    with FakeLocalAPI(tmp_path / "fgpu.sock", STATUS, dns=DNS) as fgpu, \
            FakeLocalAPI(tmp_path / "work.sock", STATUS) as work:
        yield Path(fgpu.socket_path), Path(work.socket_path)


def fresh(fakes: tuple[Path, Path]) -> Responder:
    return responder(*fakes)


def answered(dns: Responder, data: bytes, fast: bool) -> bytes | None:
    if fast and (reply := dns.answer_now(data)) is not None:
        return reply
    return asyncio.run(dns.answer(data))


@pytest.mark.parametrize("data, counter", CORPUS)
def test_each_answer_counts_once_where_it_belongs(fakes: tuple[Path, Path], data: bytes,
                                                  counter: tuple[str, str, str]) -> None:
    for fast in (False, True):
        dns = fresh(fakes)
        # Asked three times: the fast path builds its answer, then takes it from its cache.
        for times in (1, 2, 3):
            assert answered(dns, data, fast) is not None
            assert dns.counts.counted() == {counter: times}, fast


def test_a_reply_that_is_none_counts_nothing(fakes: tuple[Path, Path]) -> None:
    dns = fresh(fakes)
    response = bytearray(query("10.1.2.3.fgpu"))
    response[2] |= 0x80  # QR: a response, never answered
    for data in (bytes(response), b"\x12\x34"):
        assert dns.answer_now(data) is None and asyncio.run(dns.answer(data)) is None
    assert not dns.counts.counted()


def test_the_counters_outlive_a_new_responder(fakes: tuple[Path, Path]) -> None:
    """A reload swaps in a Responder for the new zones: the counts go on."""
    counts = QueryCounts()
    first = Responder(fresh(fakes).zones, counts=counts)
    assert first.answer_now(query("10.1.2.3.fgpu"))
    second = Responder(first.zones, counts=counts)
    assert second.answer_now(query("10.1.2.3.fgpu"))
    assert counts.counted() == {("fgpu", "A", "NOERROR"): 2}


def counts_file(tmp_path: Path, dns: Responder) -> Path:
    path = tmp_path / "queries.json"
    StatsFile(dns.counts, str(path)).write()
    return path


def test_the_file_and_its_metrics(fakes: tuple[Path, Path], tmp_path: Path) -> None:
    dns = fresh(fakes)
    for data, _counter in CORPUS:
        answered(dns, data, fast=True)
    path = counts_file(tmp_path, dns)
    written = json.loads(path.read_text())
    assert written["queries"]["fgpu"]["A"] == {"NOERROR": 2, "NXDOMAIN": 2, "SERVFAIL": 1}
    assert written["queries"]["work"] == {"A": {"BADVERS": 1}, "other": {"NOERROR": 1}}
    assert written["outside"] == {"A": {"NOTIMP": 1, "REFUSED": 3}, "none": {"FORMERR": 2}}
    assert written["started"] == round(dns.counts.started, 3)

    text = metrics.render(metrics.dns_families("fgpu", str(path)))
    done = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr + text
    lines = text.splitlines()
    assert 'tsproxy_dns_queries_total{tsproxy_instance="fgpu",rcode="NXDOMAIN",type="A"} 2' \
        in lines
    assert 'tsproxy_dns_queries_total{tsproxy_instance="fgpu",rcode="NOERROR",type="TXT"} 1' \
        in lines
    assert not [line for line in lines if 'instance="work"' in line]
    assert 'tsproxy_dns_outside_queries_total{tsproxy_instance="fgpu",rcode="REFUSED",' \
        'type="A"} 3' in lines
    assert f'tsproxy_dns_start_time_seconds{{tsproxy_instance="fgpu"}} ' \
        f'{round(dns.counts.started, 3)!r}' in lines


def test_an_instance_the_responder_never_answered_for(fakes: tuple[Path, Path],
                                                       tmp_path: Path) -> None:
    """Its queries family has no sample yet (promtool accepts that); the rest is there."""
    text = metrics.render(metrics.dns_families("quiet", str(counts_file(tmp_path, fresh(fakes)))))
    assert "tsproxy_dns_queries_total{" not in text
    assert 'tsproxy_dns_start_time_seconds{tsproxy_instance="quiet"}' in text
    done = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr + text


@pytest.mark.parametrize("content", [
    None,  # no responder, or one without a RuntimeDirectory
    "",
    '{"started": 1.5, "outside": {}, "queries": {"fgpu": {"A": {"NOERROR": 1',  # half
    "[]",
    '{"outside": {}, "queries": {}}',
    '{"started": "today", "outside": {}, "queries": {}}',
    '{"started": 1.5, "outside": [], "queries": {}}',
    '{"started": 1.5, "outside": {}, "queries": []}',
    '{"started": 1.5, "outside": {}, "queries": {"fgpu": {"A": 3}}}',
    '{"started": 1.5, "outside": {}, "queries": {"fgpu": {"A": {"NOERROR": -1}}}}',
    '{"started": 1.5, "outside": {}, "queries": {"fgpu": {"A": {"NOERROR": true}}}}',
    '{"started": 1.5, "outside": {"A": {"REFUSED": 1.5}}, "queries": {}}',
    "\xff\xfe",
])
def test_a_bad_file_costs_only_the_dns_families(tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "queries.json"
    if content is not None:
        path.write_bytes(content.encode("latin-1"))
    assert metrics.dns_families("fgpu", str(path)) == []
    directory = tmp_path / "a-directory"
    directory.mkdir()
    assert metrics.dns_families("fgpu", str(directory)) == []


def test_a_scrape_without_a_responder_still_succeeds(tmp_path: Path) -> None:
    """No DNS file and no tailscaled: the proxy's own families, and tailscaled down."""
    from tsproxy.localapi import LocalAPI

    text = asyncio.run(metrics.scrape(Stats("fgpu", "100.80.0.1:1080"),
                                      LocalAPI(str(tmp_path / "none.sock")),
                                      str(tmp_path / "queries.json")))
    assert 'tsproxy_tailscaled_up{tsproxy_instance="fgpu"} 0' in text
    assert "tsproxy_dns" not in text
