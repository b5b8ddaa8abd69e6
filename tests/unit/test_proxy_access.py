"""The proxy's decisions without sockets: egress policy, client networks, the users file,
identities (through the fake LocalAPI), caps, route table parsing, log lines."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
from pathlib import Path

import pytest

from tests.fake_localapi import FakeLocalAPI, make_whois
from tsproxy.errors import TsproxyError
from tsproxy.localapi import LocalAPI
from tsproxy.proxy import routes
from tsproxy.proxy.access import ClientNetworks, Identities, Users
from tsproxy.proxy.egress import LocalAddresses, Policy
from tsproxy.proxy.limits import GLOBAL, PER_CLIENT, REFUSING_MAX, Limits
from tsproxy.proxy.stats import Record, shown
from tsproxy_generator.addresses import ip_literal

pytestmark = pytest.mark.unit

net = ipaddress.ip_network
addr = ipaddress.ip_address


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.255.0.9", "0.0.0.0", "0.1.2.3", "169.254.169.254", "224.0.0.251",
    "239.1.1.1", "255.255.255.255", "10.200.0.1", "10.200.255.254", "100.100.100.100",
    "::", "::1", "fe80::1", "ff02::1", "fd7a:115c:a1e0::53", "::ffff:127.0.0.1",
    "::ffff:100.100.100.100", "192.168.7.1",  # the last one: this instance's veth_subnet
])
def test_egress_refuses(address: str) -> None:
    assert Policy(net("192.168.7.0/30")).refuses(addr(address))


@pytest.mark.parametrize("address", [
    "100.64.0.7", "100.100.100.99", "100.100.100.101", "10.199.255.255", "10.201.0.0",
    "192.168.7.4", "fd7a:115c:a1e0::7", "fd7a:115c:a1e0::54", "1.1.1.1", "2001:db8::1",
])
def test_egress_allows(address: str) -> None:
    assert not Policy(net("192.168.7.0/30")).refuses(addr(address))


def test_allow_egress_opens_exactly_its_networks() -> None:
    policy = Policy(net("10.200.3.4/30"), [net("100.100.100.100/32"), net("127.0.0.0/8")])
    assert not policy.refuses(addr("100.100.100.100"))
    assert not policy.refuses(addr("127.0.0.1")) and not policy.refuses(addr("::ffff:127.0.0.1"))
    assert policy.refuses(addr("::1")) and policy.refuses(addr("10.200.3.5"))


def test_egress_refuses_the_namespaces_own_addresses_unless_allowed() -> None:
    own = {addr("100.70.0.1"), addr("fd7a:115c:a1e0::1")}
    policy = Policy(None, is_local=own.__contains__)
    assert policy.refuses(addr("100.70.0.1")) and policy.refuses(addr("fd7a:115c:a1e0::1"))
    assert policy.refuses(addr("::ffff:100.70.0.1"))
    assert not policy.refuses(addr("100.70.0.2"))
    opened = Policy(None, [net("100.70.0.1/32")], is_local=own.__contains__)
    assert not opened.refuses(addr("100.70.0.1"))


def test_local_addresses_asks_the_kernel_every_time() -> None:
    local = LocalAddresses()
    # Loopback beyond 127.0.0.1 is local too (no address lists it), and a yes in between
    # must not spoil the probe for the next question.
    answers = [local.contains(addr(a)) for a in
               ("192.0.2.77", "127.0.0.1", "127.3.2.1", "192.0.2.77", "::1", "2001:db8::1")]
    assert answers == [False, True, True, False, True, False]
    # The host's own address, whatever it is, where the machine has one.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("192.0.2.1", 9))
        except OSError:
            return
        assert local.contains(addr(sock.getsockname()[0]))


@pytest.mark.parametrize("text, expected", [
    ("100.64.0.1", "100.64.0.1"), ("fd7a:115c:a1e0::1", "fd7a:115c:a1e0::1"),
    ("::ffff:1.2.3.4", "::ffff:102:304"), ("010.1.2.3", None), ("1.2.3", None),
    ("fe80::1%eth0", None), ("web.fgpu", None), ("1.2.3.4.fgpu", None), ("", None),
])
def test_ip_literal(text: str, expected: str | None) -> None:
    found = ip_literal(text)
    assert (str(found) if found else None) == expected


def test_client_networks() -> None:
    networks = ClientNetworks([net("100.64.0.0/10"), net("::1/128")])
    assert networks.allows("100.100.1.2") and networks.allows("::1")
    assert networks.allows("::ffff:100.64.0.1")  # a v4 client on a dual-stack listener
    assert not networks.allows("192.0.2.1") and not networks.allows("not an address")
    assert not networks.allows("192.0.2.1")  # cached answers are the same answers


def test_users_file(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text("# comment\n  # indented comment\n\n   \nalice:s3cret\r\n"
                    "bob:pa:ss word\ncarol: spaced \n")
    path.chmod(0o600)
    users = Users.load(str(path))
    assert len(users) == 3
    assert users.authenticate("alice", "s3cret") and users.authenticate("bob", "pa:ss word")
    # The password is the rest of the line, verbatim.
    assert users.authenticate("carol", " spaced ") and not users.authenticate("carol", "spaced")
    assert not users.authenticate("alice", "s3cret ") and not users.authenticate("eve", "")
    assert not users.authenticate("Alice", "s3cret")


@pytest.mark.parametrize("text, mode, message", [
    ("alice:x\n", 0o640, "readable by group or others (mode 640): chmod 600 it"),
    ("alice\n", 0o600, "line 1: not user:password"),
    ("# ok\n:nobody\n", 0o600, "line 2: not user:password"),
    (b"\xff:x\n", 0o600, "line 1: not UTF-8"),
])
def test_bad_users_files(tmp_path: Path, text: str | bytes, mode: int, message: str) -> None:
    path = tmp_path / "users"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    path.chmod(mode)
    with pytest.raises(TsproxyError) as error:
        Users.load(str(path))
    assert str(error.value) == f"{path}: {message}"


def test_identities_by_whois(tmp_path: Path) -> None:
    sock = tmp_path / "ts.sock"
    whois = {"100.64.0.2": make_whois("alice@example.com"),
             "100.64.0.3": make_whois("ops@example.com", tags=["tag:ops"])}

    async def test(fake: FakeLocalAPI) -> None:
        identities = Identities(["alice@example.com", "tag:ci"], LocalAPI(str(sock)))
        alice = await identities.check("100.64.0.2")
        assert alice.allowed and alice.name == "alice@example.com"
        ops = await identities.check("100.64.0.3")
        assert not ops.allowed and ops.name == "tag:ops"
        assert "tag:ops is not in allow_identities" in ops.reason
        stranger = await identities.check("100.64.0.9")
        assert not stranger.allowed and stranger.name is None
        # A burst from one client costs one WhoIs, and answers are reused.
        before = fake.count("whois")
        results = await asyncio.gather(*(identities.check("100.64.0.4") for _ in range(20)))
        assert fake.count("whois") == before + 1 and not any(r.allowed for r in results)
        await identities.check("100.64.0.2")
        assert fake.count("whois") == before + 1

    with FakeLocalAPI(sock, whois=whois) as fake:
        asyncio.run(test(fake))


def test_identities_deny_when_tailscaled_is_down(tmp_path: Path) -> None:
    async def test() -> None:
        identities = Identities(["alice@example.com"], LocalAPI(str(tmp_path / "none.sock")))
        down = await identities.check("100.64.0.2")
        assert not down.allowed and "tailscaled is not running" in down.reason

    asyncio.run(test())


def test_caps() -> None:
    caps = Limits(total=3, per_client=2)
    assert caps.admit("a") is None and caps.admit("a") is None
    assert caps.admit("a") == PER_CLIENT
    assert caps.admit("b") is None
    assert caps.admit("c") == GLOBAL
    caps.release("a")
    assert caps.admit("c") is None
    for client in ("a", "b", "c"):
        caps.release(client)
    assert caps.active == 0 and caps._per_client == {}
    assert all(caps.start_refusal() for _ in range(REFUSING_MAX))
    assert not caps.start_refusal()


def rtmsg(family: int, dst: bytes, dst_len: int, oif: int, kind: int = routes.RTN_UNICAST,
          multipath: list[int] | None = None) -> bytes:
    attrs = b""
    if dst_len:
        attrs += struct.pack("=HH", 4 + len(dst), routes.RTA_DST) + dst
    if oif:
        attrs += struct.pack("=HHi", 8, routes.RTA_OIF, oif)
    if multipath:
        hops = b"".join(struct.pack("=HBBi", 8, 0, 0, index) for index in multipath)
        attrs += struct.pack("=HH", 4 + len(hops), routes.RTA_MULTIPATH) + hops
    return routes.RTMSG.pack(family, dst_len, 0, 0, 52, 0, 0, kind, 0) + attrs


def test_route_messages() -> None:
    four, six = socket.AF_INET, socket.AF_INET6
    assert routes._route(rtmsg(four, bytes([100, 64, 0, 0]), 10, 7), four, 7) == \
        net("100.64.0.0/10")
    assert routes._route(rtmsg(four, b"", 0, 7), four, 7) == net("0.0.0.0/0")  # exit node
    assert routes._route(rtmsg(four, bytes([10, 0, 0, 0]), 8, 3), four, 7) is None
    assert routes._route(rtmsg(four, bytes([10, 0, 0, 0]), 8, 0, multipath=[3, 7]),
                         four, 7) == net("10.0.0.0/8")
    assert routes._route(rtmsg(four, bytes([100, 64, 0, 1]), 32, 7, kind=2), four, 7) is None
    v6 = ipaddress.IPv6Address("fd7a:115c:a1e0::").packed
    assert routes._route(rtmsg(six, v6, 48, 7), six, 7) == net("fd7a:115c:a1e0::/48")


def test_routes_of_a_missing_interface() -> None:
    table = routes.Routes("no-such-if0")
    assert not table.covers(addr("100.64.0.1"))
    assert table.error == "there is no no-such-if0 (is tailscaled up?)"


def test_routes_of_loopback_from_the_kernel() -> None:
    # Unprivileged and read-only: the dump of this namespace's own tables.
    assert isinstance(list(routes.routes_via(socket.if_nametoindex("lo"))), list)


def test_log_line() -> None:
    record = Record("100.64.0.2:5000", 10.0)
    record.protocol, record.user, record.identity = "socks5", "al ice", "alice@example.com"
    record.target, record.address, record.up, record.down = "web.fgpu:22", "100.64.0.7:22", 5, 7
    record.end("closed", "closed")
    assert record.line(11.5) == ("client=100.64.0.2:5000 socks5 user='al ice' "
                                 "identity=alice@example.com to=web.fgpu:22 "
                                 "addr=100.64.0.7:22 up=5 down=7 time=1.500s: closed")
    assert shown("bad\nname") == "'bad\\nname'" and shown("x" * 100) == repr("x" * 80)
