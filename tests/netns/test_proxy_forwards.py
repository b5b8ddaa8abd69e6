"""Fixed forwards (`forward = PORT[/udp]=HOST:PORT`), judged by programs that know nothing of
proxies: psql to a PostgreSQL server, curl and OpenBSD nc through TCP forwards, dig through a
UDP forward to a real DNS server (dnsmasq), all in the target's namespace. The same client
checks, egress policy, log lines and counters as the proxy's."""

from __future__ import annotations

import glob
import re
import shutil
import signal
import tempfile
from collections.abc import Iterator

import pytest
from proxyhost import (
    ALICE,
    ECHO_PORT,
    GATEWAY_TS,
    HTTP_PORT,
    PROXY_IP,
    STRANGER,
    TARGET,
    TARGET4,
    ProxyWorld,
)

pytestmark = pytest.mark.netns

WEB, ECHO, BY_NAME, LOOPBACK, DNS, DNS_NAMED, PSQL = (15080, 19000, 15081, 15082, 15353,
                                                      15354, 15432)
CONF = (f"allow_clients = {ALICE}/32\n"
        f"forward = {WEB}={TARGET4}:{HTTP_PORT}, {ECHO}={TARGET4}:{ECHO_PORT}, "
        f"{BY_NAME}=web.fgpu:{HTTP_PORT}, {LOOPBACK}=127.0.0.1:{HTTP_PORT}, "
        f"{DNS}/udp={TARGET4}:53, {DNS_NAMED}/udp=web.fgpu:53, {PSQL}=web.fgpu:5432\n")
SOCKETS = (f"{WEB}/tcp", f"{ECHO}/tcp", f"{BY_NAME}/tcp", f"{LOOPBACK}/tcp", f"{DNS}/udp",
           f"{DNS_NAMED}/udp", f"{PSQL}/tcp")
DNSMASQ = ("dnsmasq -k --conf-file=/dev/null --port=53 --listen-address={ip} --bind-interfaces "
           "--no-resolv --no-hosts --address=/probe.test/192.0.2.77 & "
           "for i in $(seq 200); do ss -Hlun 'sport = :53' | grep -q {ip} && break; "
           "sleep 0.05; done; echo ready; wait")


# Debian's PostgreSQL server binaries (tools/install-deps installs them without a cluster).
POSTGRES_BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1:]
POSTGRES = ("runuser -u postgres -- {bin}/initdb -A trust -D {dir}/data >/dev/null && "
            "echo 'host all all 0.0.0.0/0 trust' >> {dir}/data/pg_hba.conf && "
            "exec runuser -u postgres -- {bin}/postgres -D {dir}/data -p 5432 "
            "-c listen_addresses={ip} -c unix_socket_directories={dir} & "
            "until pg_isready -q -h {ip} -p 5432; do sleep 0.1; done; echo ready; wait")


@pytest.fixture(scope="module")
def world(world: ProxyWorld) -> Iterator[ProxyWorld]:
    world.fake.spawn("ip", "netns", "exec", TARGET, "sh", "-c", DNSMASQ.format(ip=TARGET4))
    # A directory the postgres user can reach (pytest's own are root's alone).
    data = tempfile.mkdtemp(prefix="tsproxy-pg-")
    shutil.chown(data, "postgres")
    try:
        if POSTGRES_BIN:
            world.fake.spawn("ip", "netns", "exec", TARGET, "sh", "-c", POSTGRES.format(
                bin=POSTGRES_BIN[0], dir=data, ip=TARGET4))
        world.start_proxy(CONF, forwards=SOCKETS)
        world.wait_log(rf"forwarding {PROXY_IP}:{DNS_NAMED}/udp to web\.fgpu:53")
        yield world
    finally:
        world.stop_proxy()
        shutil.rmtree(data, ignore_errors=True)


def test_psql_through_a_tcp_forward(world: ProxyWorld) -> None:
    assert POSTGRES_BIN, "PostgreSQL's server is missing: tools/install-deps test installs it"
    done = world.client("psql", "-h", PROXY_IP, "-p", str(PSQL), "-U", "postgres", "-At", "-c",
                        "select 'reached from ' || host(inet_client_addr())")
    assert (done.returncode, done.stdout) == (0, f"reached from {GATEWAY_TS}\n"), done.stderr
    world.wait_log(rf"client={ALICE}:\d+ forward to=web\.fgpu:5432 addr={TARGET4}:5432 .*: closed")


def test_curl_through_a_tcp_forward(world: ProxyWorld) -> None:
    done = world.curl(f"http://{PROXY_IP}:{WEB}/")
    assert done.returncode == 0, done.stderr
    # The target sees the gateway's tailnet address: the connection left from the namespace.
    assert GATEWAY_TS in done.stdout
    line = world.wait_log(rf"client={ALICE}:\d+ forward to={TARGET4}:{HTTP_PORT} "
                          rf"addr={TARGET4}:{HTTP_PORT} up=\d+ down=\d+ .*: closed")[-1]
    assert "user=" not in line


def test_a_name_is_resolved_in_the_tailnet(world: ProxyWorld) -> None:
    done = world.curl(f"http://{PROXY_IP}:{BY_NAME}/")
    assert done.returncode == 0 and GATEWAY_TS in done.stdout, done.stderr
    world.wait_log(rf"forward to=web\.fgpu:{HTTP_PORT} addr={TARGET4}:{HTTP_PORT}")


def test_nc_echo_both_ways(world: ProxyWorld) -> None:
    done = world.client("nc", "-N", "-w", "5", PROXY_IP, str(ECHO), input="hello forward\n")
    assert (done.returncode, done.stdout) == (0, "hello forward\n"), done.stderr


def test_the_egress_policy_holds(world: ProxyWorld) -> None:
    done = world.curl(f"http://{PROXY_IP}:{LOOPBACK}/")
    assert done.returncode != 0  # closed without a byte: a forward has no way to say why
    world.wait_log(rf"forward to=127\.0\.0\.1:{HTTP_PORT} .*: refused \(closed\): egress to "
                   r"127\.0\.0\.1 is not allowed")


def test_a_client_not_allowed_is_closed(world: ProxyWorld) -> None:
    done = world.client("curl", "-sS", "--max-time", "5", "--interface", STRANGER,
                        f"http://{PROXY_IP}:{WEB}/")
    assert done.returncode != 0
    world.wait_log(rf"client={STRANGER}:\d+ forward .*refused \(closed\): client address not in "
                   "allow_clients")


def test_dig_through_a_udp_forward(world: ProxyWorld) -> None:
    for port in (DNS, DNS_NAMED):
        done = world.client("dig", "+short", "+time=3", "+tries=2", f"@{PROXY_IP}", "-p",
                            str(port), "probe.test")
        assert (done.returncode, done.stdout) == (0, "192.0.2.77\n"), (port, done.stderr)
    # TCP is not what a /udp forward offers.
    done = world.client("dig", "+tcp", "+time=2", "+tries=1", f"@{PROXY_IP}", "-p", str(DNS),
                        "probe.test")
    assert done.returncode != 0


def test_udp_from_a_client_not_allowed_gets_nothing(world: ProxyWorld) -> None:
    done = world.client("dig", "+short", "+time=1", "+tries=1", "-b", STRANGER,
                        f"@{PROXY_IP}", "-p", str(DNS), "probe.test")
    assert done.returncode != 0 and "192.0.2.77" not in done.stdout
    # Five datagrams from one source port are one association, refused once (dig takes a new
    # port for each try, so a plain socket sends them).
    world.python(f"""
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("{STRANGER}", 0))
for _ in range(5):
    s.sendto(b"not even DNS", ("{PROXY_IP}", {DNS}))
    time.sleep(0.05)
""")


def test_udp_associations_end_in_one_log_line_each(world: ProxyWorld) -> None:
    """Every association ends on the way out (a stopping proxy ends them at once), one line
    each, with its bytes; the refused client's three tries made one association."""
    world.stop_proxy(signal.SIGTERM)
    log = world.log()
    udp = [line for line in log.splitlines() if re.search(r" udp to=", line)]
    assert any(re.search(rf"client={ALICE}:\d+ udp to={TARGET4}:53 addr={TARGET4}:53 "
                         r"up=[1-9]\d* down=[1-9]\d* .*: proxy shutting down", line)
               for line in udp), log
    refused = [line for line in udp if line.startswith(f"client={STRANGER}:")]
    assert refused and all("refused: client address not in allow_clients" in line
                           for line in refused), log
    assert len(refused) == 2  # dig's, and the five datagrams': one per association
