"""SOCKS5 UDP ASSOCIATE (RFC 1928 section 7), judged by clients we did not write: kdig under
Dante's socksify, and PySocks, asking a real DNS server (dnsmasq) in the target's namespace.
Then what the relay must refuse, with a raw client: datagrams from anyone but the client,
fragments, egress to the namespace itself and to loopback, a client not in allow_clients,
an association without the login; and that it ends with its connection."""

from __future__ import annotations

import re
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from proxyhost import (
    ALICE,
    GATEWAY_TS,
    PROXY_IP,
    PROXY_PORT,
    STRANGER,
    TARGET,
    TARGET4,
    ProxyWorld,
)
from test_proxy_forwards import DNSMASQ

pytestmark = pytest.mark.netns

CONF = f"allow_clients = {ALICE}/32\n"
ASSOCIATE = (f"{PROXY_PORT}/udp",)  # the datagram socket on the proxy's own address and port
DANTE = f"""
route {{
    from: 0.0.0.0/0 to: 0.0.0.0/0 via: {PROXY_IP} port = {PROXY_PORT}
    protocol: tcp udp
    proxyprotocol: socks_v5
    method: none
}}
"""
# PySocks, as a program would use it: one datagram socket through the proxy.
PYSOCKS = f"""
import socket, sys, socks, dnslib
s = socks.socksocket(socket.AF_INET, socket.SOCK_DGRAM)
s.set_proxy(socks.SOCKS5, "{PROXY_IP}", {PROXY_PORT}, {{login}})
s.settimeout(5)
if len(sys.argv) > 2:
    s.bind((sys.argv[2], 0))  # a source other than the control connection's
s.sendto(dnslib.DNSRecord.question("probe.test").pack(), (sys.argv[1], 53))
answer = dnslib.DNSRecord.parse(s.recv(4096))
print(answer.rr[0].rdata, answer.header.id != 0)
"""
# A raw client: an association from ALICE, then datagrams as the test says.
RAW = f"""
import socket, struct, sys, time, dnslib
control = socket.create_connection(("{PROXY_IP}", {PROXY_PORT}), source_address=("{ALICE}", 0))
control.sendall(b"\\x05\\x01\\x00")
assert control.recv(2) == b"\\x05\\x00"
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("{ALICE}", 0))
control.sendall(b"\\x05\\x03\\x00\\x01" + bytes(4) + struct.pack(">H", udp.getsockname()[1]))
reply = control.recv(10)
assert reply[:4] == b"\\x05\\x00\\x00\\x01", reply
relay = (socket.inet_ntoa(reply[4:8]), struct.unpack(">H", reply[8:10])[0])
print("relay", *relay)
query = dnslib.DNSRecord.question("probe.test").pack()
stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
stranger.bind(("{STRANGER}", 0))
udp.settimeout(1)
stranger.settimeout(1)

def ask(sock, header, expect=True):
    sock.sendto(header + query, relay)
    try:
        data = sock.recv(4096)
    except TimeoutError:
        print("nothing")
        return
    print("answer", data[:10].hex(), dnslib.DNSRecord.parse(data[10:]).rr[0].rdata)

for step in sys.argv[1:]:
    if step == "close":
        control.close()
        time.sleep(0.5)
        continue
    sock, header = (stranger, step[9:]) if step.startswith("stranger:") else (udp, step)
    ask(sock, bytes.fromhex(header))
"""


def header(host: str, port: int = 53, frag: int = 0) -> str:
    return (bytes([0, 0, frag, 1]) + bytes(map(int, host.split("."))) +
            port.to_bytes(2, "big")).hex()


@pytest.fixture(scope="module")
def world(world: ProxyWorld) -> Iterator[ProxyWorld]:
    world.fake.spawn("ip", "netns", "exec", TARGET, "sh", "-c", DNSMASQ.format(ip=TARGET4))
    try:
        world.start_proxy(CONF, forwards=ASSOCIATE)
        world.wait_log(r"proxy listening on .*udp associate")
        yield world
    finally:
        world.stop_proxy()


def test_kdig_under_socksify(world: ProxyWorld, tmp_path: Path) -> None:
    """Knot's kdig: BIND's dig sends through libuv's sendmmsg(), which socksify does not
    wrap, so its queries reach the relay without a header (and are refused as fragments)."""
    conf = tmp_path / "dante.conf"
    conf.write_text(DANTE)
    done = world.client("env", f"SOCKS_CONF={conf}", "socksify", "kdig", "+short", "+time=3",
                        "+retry=0", f"@{TARGET4}", "probe.test")
    assert (done.returncode, done.stdout) == (0, "192.0.2.77\n"), done.stderr
    world.wait_log(rf"client={ALICE}:\d+ socks5 udp up=[1-9]\d* down=[1-9]\d* .*: closed$")


def test_pysocks_by_name(world: ProxyWorld) -> None:
    """A name in the datagram's header is resolved by the proxy, in the tailnet."""
    out = world.python(PYSOCKS.replace("{login}", "True"), "web.fgpu")
    assert out == "192.0.2.77 True\n"


def test_datagrams_from_another_address_are_dropped(world: ProxyWorld) -> None:
    """PySocks' datagrams from STRANGER while its connection comes from ALICE: RFC 1928 lets
    the relay take only the connection's address."""
    done = world.client(sys.executable, "-c", PYSOCKS.replace("{login}", "True"), TARGET4,
                        STRANGER)
    assert done.returncode != 0 and "timed out" in done.stderr, done.stderr
    assert world.wait_stats(lambda s: s["datagrams_dropped"].get("stranger", 0) >= 1)


def test_what_the_relay_refuses(world: ProxyWorld) -> None:
    ok = header(TARGET4)
    out = world.python(RAW, ok, "stranger:" + ok, header(TARGET4, frag=1),
                       header("127.0.0.1"), header(GATEWAY_TS), ok, "close", ok).split("\n")
    assert out[0] == f"relay {PROXY_IP} {PROXY_PORT}"  # BND: where the client connected to
    assert out[1:] == [
        f"answer {header(TARGET4)} 192.0.2.77",  # the answer says where it came from
        "nothing",  # from STRANGER
        "nothing",  # a fragment
        "nothing",  # loopback
        "nothing",  # the namespace's own address
        f"answer {header(TARGET4)} 192.0.2.77",  # the association still stands
        "nothing",  # after the connection closed
        ""]
    # Said once per association and kind: the second refused egress is only counted.
    for reason in (r"\(fragment\): fragment 1", r"\(egress\): egress to 127\.0\.0\.1 is not"):
        assert len(world.wait_log(rf"client={ALICE}:\d+ socks5 udp: datagram dropped {reason}")
                   ) == 1
    assert GATEWAY_TS not in world.log()
    world.wait_stats(lambda s: s["datagrams_dropped"].get("egress", 0) >= 2 and
                     s["datagrams_dropped"].get("fragment", 0) >= 1)


def test_a_client_not_allowed_gets_rep_2(world: ProxyWorld) -> None:
    out = world.python(f"""
import socket
c = socket.create_connection(("{PROXY_IP}", {PROXY_PORT}), source_address=("{STRANGER}", 0))
c.sendall(b"\\x05\\x01\\x00")
assert c.recv(2) == b"\\x05\\x00"
c.sendall(b"\\x05\\x03\\x00\\x01" + bytes(6))
print(c.recv(10).hex(), c.recv(1))
""")
    assert out == "05020001000000000000 b''\n"
    world.wait_log(rf"client={STRANGER}:\d+ socks5 udp .*refused \(REP 2\): client address not "
                   "in allow_clients")


def test_no_login_no_association(world: ProxyWorld, tmp_path: Path) -> None:
    users = tmp_path / "users"
    users.write_text("alice:secret\n")
    users.chmod(0o600)
    world.start_proxy(f"{CONF}users_file = {users}\n", forwards=ASSOCIATE)
    try:
        done = world.client(sys.executable, "-c", PYSOCKS.replace("{login}", "True"), TARGET4)
        assert done.returncode != 0 and "192.0.2.77" not in done.stdout
        world.wait_log(rf"client={ALICE}:\d+ socks5 .*: bad handshake: no acceptable method: "
                       "wanted USERNAME_PASSWORD")
        done = world.client(sys.executable, "-c",
                            PYSOCKS.replace("{login}", 'True, "alice", "wrong"'), TARGET4)
        assert done.returncode != 0 and "192.0.2.77" not in done.stdout
        world.wait_log(rf"client={ALICE}:\d+ socks5 .*: login: authentication failed for user "
                       "'alice'")
        out = world.python(PYSOCKS.replace("{login}", 'True, "alice", "secret"'), TARGET4)
        assert out == "192.0.2.77 True\n"
        world.wait_log(rf"client={ALICE}:\d+ socks5 user=alice udp up=[1-9]")
    finally:
        world.start_proxy(CONF, forwards=ASSOCIATE)


def test_associations_end_at_once_on_sigterm(world: ProxyWorld) -> None:
    holder = world.background(sys.executable, "-c", RAW + "\nprint('held', flush=True)\n"
                              "sys.stdin.read()\n")
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().startswith("relay")
        assert holder.stdout.readline() == "held\n"
        world.stop_proxy(signal.SIGTERM)
        log = world.log()
        assert re.search(rf"client={ALICE}:\d+ socks5 udp up=0 down=0 .*: proxy shutting down",
                         log), log
        assert "cutting" not in log  # ended at once, not after the drain's grace
    finally:
        holder.kill()
        holder.wait()
        world.start_proxy(CONF, forwards=ASSOCIATE)
