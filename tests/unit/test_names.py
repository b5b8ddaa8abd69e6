"""Every name form -> exact addresses or the exact exception, with the fake tailscaled."""

from __future__ import annotations

import asyncio
import ipaddress
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dnslib  # type: ignore[import-untyped]
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the fake lives there

from fake_localapi import FakeLocalAPI, make_node, make_status

from tsproxy.localapi import LocalAPI
from tsproxy.names import (
    NameNotFound,
    ResolveError,
    Resolver,
    ResolverDown,
    answer_addresses,
)

pytestmark = pytest.mark.unit

PEERS = [
    make_node("gpu", ["fd7a:115c:a1e0::7", "100.64.0.7"]),  # IPv6 listed first on purpose
    make_node("build-1", ["100.64.0.8"], hostname="Build-Box"),
    make_node("box-a", ["100.64.0.21"], hostname="box"),
    make_node("box-b", ["100.64.0.22"], hostname="box"),
    make_node("db", ["100.64.0.31"]),
    make_node("db-old", ["100.64.0.32"], hostname="db"),  # HostName "db" loses to DNSName "db"
    make_node("web", ["100.64.0.41"], magic_suffix="other.ts.net"),  # shared from elsewhere
    make_node("web", ["100.64.0.42"]),  # ours: MagicDNSSuffix decides
    make_node("xn--bcher-kva", ["100.64.0.51"]),
    make_node("noaddr", []),
]
STATUS = make_status("gw", ["100.64.0.1", "fd7a:115c:a1e0::1"], peers=PEERS)
DNS = {"example.com": ["192.0.2.1", "2001:db8::1"], "v6only.test": ["2001:db8::2"],
       "gpu.tail0000.ts.net": ["100.64.0.7", "fd7a:115c:a1e0::7"],
       "servfail.test": "SERVFAIL", "refused.test": "REFUSED", "nodata.test": [],
       "a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 57 + ".com": ["192.0.2.9"]}
LONGEST = "a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 57 + ".com"  # 253


def ips(*texts: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    return [ipaddress.ip_address(t) for t in texts]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeLocalAPI]:
    with FakeLocalAPI(tmp_path / "ts.sock", STATUS, dns=DNS) as server:
        yield server


def resolver(fake: FakeLocalAPI, suffix: str = "fgpu", timeout: float = 5.0) -> Resolver:
    return Resolver(suffix, LocalAPI(fake.socket_path, timeout=timeout))


def resolve(r: Resolver, host: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    return asyncio.run(r.resolve(host))


# Names that never need tailscaled: the answer, and no LocalAPI request at all.
@pytest.mark.parametrize("host, expected", [
    ("100.64.0.7.fgpu", ["100.64.0.7"]),
    ("1.2.3.4.FGPU", ["1.2.3.4"]),
    ("1.2.3.4.fgpu.", ["1.2.3.4"]),
    ("0.0.0.0.fgpu", ["0.0.0.0"]),
    ("255.255.255.255.Fgpu.", ["255.255.255.255"]),
    ("10.0.0.1.fgpu", ["10.0.0.1"]),
    ("fd7a-115c-a1e0--7.fgpu", ["fd7a:115c:a1e0::7"]),
    ("FD7A-115C-A1E0--7.FGPU.", ["fd7a:115c:a1e0::7"]),
    ("fd7a-115c-a1e0-0-0-0-0-7.fgpu", ["fd7a:115c:a1e0::7"]),
    ("--1.fgpu", ["::1"]),
    ("100.64.0.7", ["100.64.0.7"]),
    ("100.64.0.7.", ["100.64.0.7"]),
    ("fd7a:115c:a1e0::7", ["fd7a:115c:a1e0::7"]),
    ("FD7A:115C:A1E0::7", ["fd7a:115c:a1e0::7"]),
])
def test_ip_forms(fake: FakeLocalAPI, host: str, expected: list[str]) -> None:
    r = resolver(fake)
    assert r.resolve_now(host) == ips(*expected)
    assert resolve(r, host) == ips(*expected)
    assert fake.requests == []


@pytest.mark.parametrize("host, why", [
    ("010.1.2.3.fgpu", "no such name under .fgpu"),      # leading zero: octal to some
    ("1.2.3.04.fgpu", "no such name under .fgpu"),
    ("00.1.2.3.fgpu", "no such name under .fgpu"),
    ("256.1.2.3.fgpu", "no such name under .fgpu"),
    ("1.2.3.1000.fgpu", "no such name under .fgpu"),
    ("1.2.3.fgpu", "no such name under .fgpu"),          # too few labels
    ("1.2.3.4.5.fgpu", "no such name under .fgpu"),      # too many
    ("a.b.fgpu", "no such name under .fgpu"),
    ("gpu.1.2.3.4.fgpu", "no such name under .fgpu"),
    ("fgpu", "no such name under .fgpu"),
    ("fgpu.", "no such name under .fgpu"),
    ("1.2.3.4.fgpu..", "not a valid name"),
    ("1..2.3.4.fgpu", "not a valid name"),
    (".fgpu", "not a valid name"),
    ("", "not a valid name"),
    (".", "not a valid name"),
    ("1.2.3.+4.fgpu", "not a valid name"),
    ("gpu .fgpu", "not a valid name"),
    ("gpu.fgpu/x", "not a valid name"),
    ("bücher.fgpu", "not an ASCII name"),                # IDN: clients send xn--
    ("1.2.3.٤.fgpu", "not an ASCII name"),               # Arabic-Indic digit four
    ("x" * 64 + ".fgpu", "not a valid name"),            # label too long
    (LONGEST + "x", "not a valid name"),                 # 254 characters
    ("a." * 127 + "a", "not a valid name"),              # 255 characters
    ("010.1.2.3", "not a valid name or IPv4 address"),   # never sent to a resolver
    ("1.2.3", "not a valid name or IPv4 address"),
    ("1.2.3.4.5", "not a valid name or IPv4 address"),
    ("999.1.2.3", "not a valid name or IPv4 address"),
    ("fe80::1%eth0", "scoped addresses are not tailnet addresses"),
    ("[::1]", "not a valid IPv6 address"),
    ("fd7a::1::2", "not a valid IPv6 address"),
    ("1.2.3.4:80", "not a valid IPv6 address"),
])
def test_names_that_never_resolve(fake: FakeLocalAPI, host: str, why: str) -> None:
    r = resolver(fake)
    with pytest.raises(NameNotFound, match=why):
        r.resolve_now(host)
    with pytest.raises(NameNotFound, match=why):
        resolve(r, host)
    assert fake.requests == []


@pytest.mark.parametrize("host, expected", [
    ("gpu.fgpu", ["100.64.0.7", "fd7a:115c:a1e0::7"]),   # IPv4 first
    ("GPU.FGPU.", ["100.64.0.7", "fd7a:115c:a1e0::7"]),
    ("gw.fgpu", ["100.64.0.1", "fd7a:115c:a1e0::1"]),    # Self
    ("build-1.fgpu", ["100.64.0.8"]),                     # MagicDNS name
    ("build-box.fgpu", ["100.64.0.8"]),                   # HostName, case-insensitive
    ("db.fgpu", ["100.64.0.31"]),                         # DNSName beats HostName
    ("db-old.fgpu", ["100.64.0.32"]),
    ("web.fgpu", ["100.64.0.42"]),                        # own MagicDNS suffix first
    ("xn--bcher-kva.fgpu", ["100.64.0.51"]),              # punycode is an ordinary label
    ("box-a.fgpu", ["100.64.0.21"]),
])
def test_peer_names(fake: FakeLocalAPI, host: str, expected: list[str]) -> None:
    r = resolver(fake)
    assert r.resolve_now(host) is None
    assert resolve(r, host) == ips(*expected)
    assert [q.endpoint for q in fake.requests] == ["status"]


@pytest.mark.parametrize("host, why", [
    ("nosuch.fgpu", "no node 'nosuch' in this tailnet"),
    ("xn--nosuch-abc.fgpu", "no node 'xn--nosuch-abc' in this tailnet"),
    ("box.fgpu", "2 nodes answer to 'box'"),              # ambiguous HostName: no guessing
    ("noaddr.fgpu", "node has no address"),
    ("1.fgpu", "no node '1' in this tailnet"),
    ("fd7a---1.fgpu", "no node 'fd7a---1' in this tailnet"),   # no IPv6, so a peer name
    ("dead-beef.fgpu", "no node 'dead-beef' in this tailnet"),
])
def test_peer_names_not_found(fake: FakeLocalAPI, host: str, why: str) -> None:
    with pytest.raises(NameNotFound, match=why):
        resolve(resolver(fake), host)


@pytest.mark.parametrize("host, expected", [
    ("example.com", ["192.0.2.1", "2001:db8::1"]),
    ("EXAMPLE.COM.", ["192.0.2.1", "2001:db8::1"]),
    ("v6only.test", ["2001:db8::2"]),
    ("gpu.tail0000.ts.net", ["100.64.0.7", "fd7a:115c:a1e0::7"]),
    ("1.2.3.4.fgpux", []),
    (LONGEST, ["192.0.2.9"]),
    (LONGEST + ".", ["192.0.2.9"]),
])
def test_other_names_ask_tailscaled(fake: FakeLocalAPI, host: str, expected: list[str]) -> None:
    r = resolver(fake)
    assert r.resolve_now(host) is None
    if expected:
        assert resolve(r, host) == ips(*expected)
    else:
        with pytest.raises(NameNotFound, match="NXDOMAIN"):
            resolve(r, host)
    name = host.lower().rstrip(".")
    assert sorted(q.target for q in fake.requests) == [
        f"/localapi/v0/dns-query?name={name}&type=A", f"/localapi/v0/dns-query?name={name}&type=AAAA"]


@pytest.mark.parametrize("host, error, why", [
    ("nx.test", NameNotFound, "'nx.test': NXDOMAIN"),
    ("nodata.test", NameNotFound, "'nodata.test': no address"),
    ("servfail.test", ResolverDown, "tailscaled's DNS answered SERVFAIL"),
    ("refused.test", ResolverDown, "tailscaled's DNS answered REFUSED"),
])
def test_other_names_failing(fake: FakeLocalAPI, host: str, error: type[ResolveError],
                             why: str) -> None:
    with pytest.raises(error, match=why):
        resolve(resolver(fake), host)


def test_suffix_is_normalized_and_may_have_labels(fake: FakeLocalAPI) -> None:
    r = resolver(fake, suffix="GPU.Corp.")
    assert r.suffix == "gpu.corp"
    assert resolve(r, "1.2.3.4.gpu.corp") == ips("1.2.3.4")
    assert resolve(r, "gpu.gpu.corp") == ips("100.64.0.7", "fd7a:115c:a1e0::7")
    with pytest.raises(NameNotFound, match=r"no such name under \.gpu\.corp"):
        resolve(r, "corp.gpu.corp.x.gpu.corp")
    with pytest.raises(NameNotFound, match="NXDOMAIN"):
        resolve(r, "1.2.3.4.corp")  # outside the suffix: asked, and unknown


def test_daemon_down(tmp_path: Path) -> None:
    r = Resolver("fgpu", LocalAPI(str(tmp_path / "none.sock")))
    started = time.monotonic()
    assert resolve(r, "1.2.3.4.fgpu") == ips("1.2.3.4")  # IP forms need no daemon
    with pytest.raises(ResolverDown, match=r"none.sock: tailscaled is not running \(no socket\)"):
        resolve(r, "gpu.fgpu")
    with pytest.raises(ResolverDown, match=r"tailscaled is not running \(no socket\)"):
        resolve(r, "example.com")
    assert time.monotonic() - started < 0.5


@pytest.mark.parametrize("state", ["NeedsLogin", "Stopped", "NoState", "NeedsMachineAuth"])
def test_peer_names_need_a_running_tailscaled(fake: FakeLocalAPI, state: str) -> None:
    fake.status = make_status("gw", [], state=state)
    with pytest.raises(ResolverDown, match=f"tailscaled is {state}, not running"):
        resolve(resolver(fake), "gpu.fgpu")


def test_peer_names_when_starting(fake: FakeLocalAPI) -> None:
    fake.status = make_status("gw", ["100.64.0.1"], peers=PEERS, state="Starting")
    assert resolve(resolver(fake), "db.fgpu") == ips("100.64.0.31")


def test_status_error_is_resolver_down(fake: FakeLocalAPI) -> None:
    fake.errors["status"] = 403
    with pytest.raises(ResolverDown, match="HTTP 403: status failed"):
        resolve(resolver(fake), "gpu.fgpu")


def test_empty_tailnet(fake: FakeLocalAPI) -> None:
    fake.status = {"BackendState": "Running", "Self": None, "Peer": None}
    with pytest.raises(NameNotFound, match="no node 'gpu'"):
        resolve(resolver(fake), "gpu.fgpu")


def test_status_is_cached_for_the_ttl(fake: FakeLocalAPI) -> None:
    clock = Clock()
    r = Resolver("fgpu", LocalAPI(fake.socket_path), status_ttl=1.5, clock=clock)

    async def main() -> None:
        assert await r.resolve("gpu.fgpu") == ips("100.64.0.7", "fd7a:115c:a1e0::7")
        clock.now += 1.4
        await r.resolve("db.fgpu")
        assert fake.count("status") == 1
        fake.status = make_status("gw", ["100.64.0.1"], peers={"new": ["100.64.0.99"]})
        with pytest.raises(NameNotFound):
            await r.resolve("new.fgpu")  # still the cached status
        clock.now += 0.1
        assert await r.resolve("new.fgpu") == ips("100.64.0.99")
        assert fake.count("status") == 2

    asyncio.run(main())


def test_a_burst_makes_one_request(fake: FakeLocalAPI) -> None:
    r = resolver(fake)

    async def main() -> None:
        answers = await asyncio.gather(*(r.resolve(f"{n}.fgpu") for n in ["gpu", "db"] * 50))
        assert answers[:2] == [ips("100.64.0.7", "fd7a:115c:a1e0::7"), ips("100.64.0.31")]

    asyncio.run(main())
    assert fake.count("status") == 1


def test_failures_are_cached_too(tmp_path: Path) -> None:
    clock = Clock()
    sock = tmp_path / "ts.sock"
    r = Resolver("fgpu", LocalAPI(str(sock)), clock=clock)

    async def main() -> None:
        with pytest.raises(ResolverDown):
            await r.resolve("gpu.fgpu")
        with FakeLocalAPI(sock, STATUS) as fake:
            with pytest.raises(ResolverDown, match="no socket"):
                await r.resolve("gpu.fgpu")  # the failure is remembered for the TTL
            assert fake.count("status") == 0
            clock.now += 1.5
            assert await r.resolve("gpu.fgpu") == ips("100.64.0.7", "fd7a:115c:a1e0::7")

    asyncio.run(main())


def test_slow_daemon_fails_everyone_within_the_bound(tmp_path: Path) -> None:
    with FakeLocalAPI(tmp_path / "ts.sock", STATUS, slow=True) as fake:
        r = resolver(fake, timeout=0.3)

        async def main() -> list[object]:
            return list(await asyncio.gather(*(r.resolve("gpu.fgpu") for _ in range(20)),
                                             return_exceptions=True))

        started = time.monotonic()
        results = asyncio.run(main())
        elapsed = time.monotonic() - started
        assert fake.count("status") == 1
    assert all(isinstance(e, ResolverDown) and "no answer within 0.3 s" in str(e)
               for e in results)
    assert 0.3 <= elapsed < 1.0


def test_ip_forms_never_wait_for_a_slow_daemon(tmp_path: Path) -> None:
    with FakeLocalAPI(tmp_path / "ts.sock", STATUS, slow=True) as fake:
        r = resolver(fake, timeout=5)

        async def main() -> None:
            peer = asyncio.ensure_future(r.resolve("gpu.fgpu"))
            await asyncio.sleep(0.05)
            async with asyncio.timeout(0.1):
                assert await r.resolve("1.2.3.4.fgpu") == ips("1.2.3.4")
            peer.cancel()

        asyncio.run(main())


def test_a_cancelled_caller_does_not_cancel_the_shared_request(tmp_path: Path) -> None:
    with FakeLocalAPI(tmp_path / "ts.sock", STATUS, slow=True) as fake:
        r = resolver(fake, timeout=0.5)

        async def main() -> None:
            patient = asyncio.ensure_future(r.resolve("gpu.fgpu"))
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.1):
                    await r.resolve("gpu.fgpu")
            fake.slow = False  # too late for the request in flight, which times out
            with pytest.raises(ResolverDown, match=r"no answer within 0\.5 s"):
                await patient

        asyncio.run(main())
        assert fake.count("status") == 1


def reply(name: str, rcode: int = 0, *records: dnslib.RR) -> bytes:
    record = dnslib.DNSRecord(dnslib.DNSHeader(id=1, qr=1, rcode=rcode), q=dnslib.DNSQuestion(name))
    for rr in records:
        record.add_answer(rr)
    return bytes(record.pack())


def test_answers_follow_cnames_inside_the_reply() -> None:
    data = reply("www.example.com", 0,
                 dnslib.RR("www.example.com", dnslib.QTYPE.CNAME, rdata=dnslib.CNAME("edge.Example.net")),
                 dnslib.RR("edge.example.net", dnslib.QTYPE.A, rdata=dnslib.A("192.0.2.5")),
                 dnslib.RR("unrelated.example", dnslib.QTYPE.A, rdata=dnslib.A("192.0.2.66")),
                 dnslib.RR("edge.example.net", dnslib.QTYPE.AAAA, rdata=dnslib.AAAA("2001:db8::5")))
    assert answer_addresses(data, "WWW.example.com.", "A") == ips("192.0.2.5")
    assert answer_addresses(data, "www.example.com", "AAAA") == ips("2001:db8::5")


@pytest.mark.parametrize("data, error, why", [
    (b"", ResolverDown, "does not parse"),
    (b"\x00\x01\x81", ResolverDown, "does not parse"),
    (reply("x.test", 3), NameNotFound, "NXDOMAIN"),
    (reply("x.test", 2), ResolverDown, "SERVFAIL"),
    (reply("x.test", 5), ResolverDown, "REFUSED"),
])
def test_bad_answers(data: bytes, error: type[ResolveError], why: str) -> None:
    with pytest.raises(error, match=why):
        answer_addresses(data, "x.test", "A")


def test_importing_names_does_not_load_dnslib() -> None:
    # The proxy imports names at start; dnslib waits for the first answer to parse.
    code = "import sys, tsproxy.names; assert 'dnslib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True,
                   cwd=Path(__file__).resolve().parents[2])
