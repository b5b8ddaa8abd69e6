"""The fast path and the full path: the same answers on a corpus, and fuzzed.

Properties:

- corpus: every IP-embedded name form, in several cases, with and without EDNS and RD/CD,
  A and AAAA: the fast path answers each, and exactly as the full path does;
- any bytes (random, or a valid query with bytes changed, inserted or cut): neither path
  raises; when the fast path answers, the full path says the same; a reply always echoes
  the query's id.

CI runs a bounded, repeatable fuzz (TSPROXY_FUZZ_EXAMPLES, default 300, derandomized); a
longer run draws fresh examples every time:

    TSPROXY_FUZZ_EXAMPLES=50000 python3 -m pytest tests/unit/test_dns_fuzz.py -q
"""

from __future__ import annotations

import asyncio
import itertools
import os
from pathlib import Path

import pytest
from dns_harness import ask, query, responder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tsproxy.dns.answer import Responder

pytestmark = pytest.mark.unit

FUZZ = settings(
    max_examples=int(os.environ.get("TSPROXY_FUZZ_EXAMPLES", "300")),
    derandomize="TSPROXY_FUZZ_EXAMPLES" not in os.environ,
    deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# No tailscaled answers here (no socket): names that need one get SERVFAIL at once, which
# the fast path never gives, so every comparison is about names the fast path may answer.
DOWN = Path("/nonexistent/tsproxy-test.sock")
DNS = responder(DOWN, DOWN)

IP_FORMS = ["10.100.10.141.fgpu", "0.0.0.0.fgpu", "255.255.255.255.fgpu", "1.2.3.4.work.example",
            "fd7a-115c-a1e0--7.fgpu", "fd7a-115c-a1e0-0-0-0-0-7.fgpu", "--1.fgpu",
            # and names the fast path answers without an address: NXDOMAIN, NODATA
            "010.1.2.3.fgpu", "256.1.1.1.fgpu", "1.2.3.4.5.fgpu", "a.b.fgpu", "1.2.3.fgpu",
            "2.3.fgpu", "fgpu", "work.example"]


def cases(name: str) -> list[str]:
    return [name, name.upper(), "".join(c.upper() if i % 2 else c for i, c in enumerate(name))]


def test_corpus_fast_equals_full() -> None:
    answered = 0
    for name, qtype, edns, rd, cd in itertools.product(
            [n for form in IP_FORMS for n in cases(form)], ["A", "AAAA"], [None, 512, 4096],
            [True, False], [False, True]):
        data = query(name, qtype, edns=edns, rd=rd, cd=cd)
        assert DNS.answer_now(data) is not None, (name, qtype, edns)
        ask(DNS, data)  # compares the two
        answered += 1
    assert answered == len(IP_FORMS) * 3 * 2 * 3 * 2 * 2


def test_fast_path_declines_what_it_does_not_know() -> None:
    for data in (query("web.fgpu"), query("example.com"), query("10.0.0.1.fgpu", "MX"),
                 query("10.0.0.1.fgpu", qclass=3), query("host.corp.example"),
                 query("10.0.0.1.fgpu", opcode=2)):
        assert DNS.answer_now(data) is None
        ask(DNS, data)


def check(data: bytes) -> None:
    reply = ask(DNS, data)  # raises if the paths differ
    if reply is not None:
        assert reply[:2] == data[:2]
    assert asyncio.run(DNS.answer(data, udp=False)) is None or reply is not None


labels = st.one_of(st.integers(0, 300).map(str), st.sampled_from(["010", "00", "-", "fd7a--1"]),
                   st.text("0123456789abcdefABCDEF-x_", min_size=1, max_size=12))
names = st.builds(lambda parts, apex: ".".join([*parts, apex]),
                  st.lists(labels, max_size=6),
                  st.sampled_from(["fgpu", "FGPU", "work.example", "corp.example", "other"]))


@FUZZ
@given(name=names, qtype=st.sampled_from(["A", "AAAA", "ANY", "TXT", 0, 65535]),
       edns=st.sampled_from([None, 0, 512, 1232, 65535]), rd=st.booleans(), cd=st.booleans())
def test_fuzz_queries(name: str, qtype: str | int, edns: int | None, rd: bool, cd: bool) -> None:
    check(query(name, qtype, edns=edns, rd=rd, cd=cd))


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_bytes(data: bytes) -> None:
    check(data)


@FUZZ
@given(name=names, edits=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255),
                                             st.sampled_from(["set", "insert", "cut"])),
                                   min_size=1, max_size=4), edns=st.booleans())
def test_fuzz_mutated(name: str, edits: list[tuple[int, int, str]], edns: bool) -> None:
    data = bytearray(query(name, edns=1232 if edns else None))
    for position, value, how in edits:
        position %= len(data) + 1
        if how == "insert":
            data.insert(position, value)
        elif position < len(data):
            if how == "set":
                data[position] = value
            else:
                del data[position]
    check(bytes(data))


def test_cache_keeps_each_question_apart() -> None:
    """The fast path remembers answers by the question's bytes; case and EDNS are part of it."""
    fresh = responder(DOWN, DOWN)
    for name in ("10.0.0.1.fgpu", "10.0.0.1.FGPU", "10.0.0.2.fgpu"):
        for edns in (None, 1232):
            first = fresh.answer_now(query(name, edns=edns, qid=1))
            again = fresh.answer_now(query(name, edns=edns, qid=2))
            assert first is not None and again is not None
            assert (first[:2], again[:2]) == (b"\0\1", b"\0\2") and first[2:] == again[2:]
            assert name.encode().split(b".")[-1] in first
    assert isinstance(fresh, Responder)
