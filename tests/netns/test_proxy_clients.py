"""The proxy judged by third-party clients: curl, python-socks, PySocks and OpenBSD nc, through
a socket handed over as systemd does, to targets behind the gateway's tailscale0."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import pytest
from proxyhost import (
    ALICE,
    BANNER_PORT,
    ECHO_PORT,
    GATEWAY_TS,
    HTTP_PORT,
    NAME,
    PROXY,
    PROXY_IP,
    PROXY_PORT,
    TARGET4,
    TARGET6,
    ProxyWorld,
)

pytestmark = pytest.mark.netns

PATTERN = bytes(range(256)) * 256


@pytest.fixture(scope="module")
def world(world: ProxyWorld) -> ProxyWorld:
    """The shared world, with the proxy already running for every test here."""
    world.start_proxy()
    return world


def pattern_sha256(size: int) -> str:
    digest = hashlib.sha256()
    while size:
        chunk = PATTERN[:min(size, len(PATTERN))]
        digest.update(chunk)
        size -= len(chunk)
    return digest.hexdigest()


@pytest.mark.parametrize("proxy, url", [
    (f"socks5://{PROXY}", f"http://{TARGET4}:{HTTP_PORT}/"),
    (f"socks5h://{PROXY}", f"http://{TARGET4}:{HTTP_PORT}/"),
    (f"socks5h://{PROXY}", f"http://web.{NAME}:{HTTP_PORT}/"),
    (f"socks5h://{PROXY}", f"http://WEB.{NAME.upper()}.:{HTTP_PORT}/"),
    (f"socks5h://{PROXY}", f"http://{TARGET4}.{NAME}:{HTTP_PORT}/"),
    (f"socks5h://{PROXY}", f"http://gpu.{NAME}:{HTTP_PORT}/"),
    (f"socks5h://{PROXY}", f"http://example.test:{HTTP_PORT}/"),
    (f"http://{PROXY}", f"http://web.{NAME}:{HTTP_PORT}/"),
])
def test_curl_reaches_the_tailnet_from_the_gateway(world: ProxyWorld, proxy: str,
                                                    url: str) -> None:
    args = ["-x", proxy, url]
    if proxy.startswith("http://"):
        args.insert(0, "-p")  # CONNECT, not absolute-form GET
    done = world.curl(*args)
    assert done.returncode == 0, done.stderr
    # The target sees the gateway's tailscale0 address: the connection left from there.
    assert done.stdout == f"{GATEWAY_TS}\n"


@pytest.mark.parametrize("url", [f"http://[{TARGET6}]:{HTTP_PORT}/",
                                 f"http://web6.{NAME}:{HTTP_PORT}/"])
def test_ipv6_destinations(world: ProxyWorld, url: str) -> None:
    done = world.curl("-x", f"socks5h://{PROXY}", url)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "fd7a:115c:a1e0::1\n"


@pytest.mark.parametrize("proxy", [f"socks5h://{PROXY}", f"http://{PROXY}"])
def test_large_download_and_upload_arrive_intact(world: ProxyWorld, tmp_path: Path,
                                                 proxy: str) -> None:
    size = 64 << 20
    tunnel = ["-p"] if proxy.startswith("http") else []
    done = world.client("sh", "-c", f"curl -sS --max-time 60 {' '.join(tunnel)} -x {proxy} "
                        f"http://web.{NAME}:{HTTP_PORT}/bytes/{size} | sha256sum", timeout=70)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == pattern_sha256(size)

    upload = tmp_path / "upload.bin"
    upload.write_bytes(os.urandom(48 << 20) + b"end")
    done = world.curl(*tunnel, "-x", proxy, "--data-binary", f"@{upload}",
                      f"http://web.{NAME}:{HTTP_PORT}/", max_time=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(upload.stat().st_size),
                                   hashlib.sha256(upload.read_bytes()).hexdigest()]


PYTHON_SOCKS = """
import sys
from python_socks.sync import Proxy
proxy = Proxy.from_url(sys.argv[1], rdns=True)
sock = proxy.connect(dest_host=sys.argv[2], dest_port=int(sys.argv[3]), timeout=10)
sock.sendall(b"hello through python-socks")
sock.shutdown(1)
data = b""
while chunk := sock.recv(65536):
    data += chunk
print(data.decode())
"""

PYSOCKS = """
import sys
import socks
kind = {"socks5": socks.SOCKS5, "http": socks.HTTP}[sys.argv[1]]
sock = socks.socksocket()
sock.settimeout(10)
sock.set_proxy(kind, sys.argv[2], int(sys.argv[3]), rdns=True)
sock.connect((sys.argv[4], int(sys.argv[5])))
sock.sendall(b"hello through PySocks")
sock.shutdown(1)
data = b""
while chunk := sock.recv(65536):
    data += chunk
print(data.decode())
"""


@pytest.mark.parametrize("scheme, host", [
    ("socks5", f"web.{NAME}"), ("socks5", TARGET4), ("socks5", TARGET6),
    ("http", f"web.{NAME}"), ("http", TARGET4),
])
def test_python_socks(world: ProxyWorld, scheme: str, host: str) -> None:
    out = world.python(PYTHON_SOCKS, f"{scheme}://{PROXY}", host, str(ECHO_PORT))
    assert out == "hello through python-socks\n"


def test_python_socks_unbracketed_ipv6_connect_gets_a_clean_400(world: ProxyWorld) -> None:
    # python-socks 2.0.3 writes `CONNECT fd7a:115c:a1e0::2:9000`: is that port 9000 or the
    # address ...::2:9000 with no port? RFC 9110 wants brackets; guessing would be worse.
    done = world.client(sys.executable, "-c", PYTHON_SOCKS, f"http://{PROXY}", TARGET6,
                        str(ECHO_PORT))
    assert "ProxyError: Proxy error: 400 Bad Request" in done.stderr


@pytest.mark.parametrize("scheme", ["socks5", "http"])
@pytest.mark.parametrize("host", [f"web.{NAME}", TARGET4])
def test_pysocks(world: ProxyWorld, scheme: str, host: str) -> None:
    out = world.python(PYSOCKS, scheme, PROXY_IP, str(PROXY_PORT), host, str(ECHO_PORT))
    assert out == "hello through PySocks\n"


@pytest.mark.parametrize("kind", ["5", "connect"])
def test_nc_proxy_command_path_with_a_server_that_speaks_first(world: ProxyWorld,
                                                               kind: str) -> None:
    # What `ssh -o ProxyCommand='nc -X 5 -x PROXY %h %p'` does: the server talks first.
    done = world.client("nc", "-N", "-w", "10", "-X", kind, "-x", PROXY, f"web.{NAME}",
                        str(BANNER_PORT), input="one\ntwo\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "SSH-2.0-target\necho one\necho two\nbye\n"


@pytest.mark.parametrize("protocol", ["socks5", "http"])
def test_half_close_goes_through_both_ways(world: ProxyWorld, protocol: str) -> None:
    # The client shuts down its side; the echo server sees EOF only through the proxy, and
    # its own EOF after the echo must come back too, or recv_all would hang.
    result = world.raw(protocol, TARGET4, ECHO_PORT, "--send", "half-closed")
    assert result["tunnel"] == "half-closed"


PIPELINED = """
import socket, sys
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
if sys.argv[3] == "socks5":
    hello = (b"\\x05\\x01\\x00" + b"\\x05\\x01\\x00\\x01" + socket.inet_aton(sys.argv[4])
             + int(sys.argv[5]).to_bytes(2, "big"))
else:
    hello = f"CONNECT {sys.argv[4]}:{sys.argv[5]} HTTP/1.1\\r\\n\\r\\n".encode()
# Handshake and payload in one segment: the payload must be forwarded, not lost.
sock.sendall(hello + b"payload right behind the request")
sock.shutdown(socket.SHUT_WR)
data = b""
while chunk := sock.recv(65536):
    data += chunk
print(data[-32:].decode())
"""


@pytest.mark.parametrize("protocol", ["socks5", "http"])
def test_bytes_pipelined_behind_the_handshake_are_forwarded(world: ProxyWorld,
                                                           protocol: str) -> None:
    out = world.python(PIPELINED, PROXY_IP, str(PROXY_PORT), protocol, TARGET4, str(ECHO_PORT))
    assert out == "payload right behind the request\n"


SMUGGLING = [
    "POST http://web.{name}:{port}/ HTTP/1.1\r\nContent-Length: 5\r\n"
    "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "POST http://web.{name}:{port}/ HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 0\r\n"
    "\r\nhello",
    "GET http://web.{name}:{port}/ HTTP/1.1\nHost: x\n\n",
    "CONNECT web.{name}:{port} HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
]


@pytest.mark.parametrize("request_text", SMUGGLING)
def test_nc_sends_ambiguous_framing_and_gets_400(world: ProxyWorld, request_text: str) -> None:
    text = request_text.format(name=NAME, port=HTTP_PORT)
    done = world.client("nc", "-N", "-w", "10", PROXY_IP, str(PROXY_PORT), input=text)
    assert done.stdout.splitlines()[:1] == ["HTTP/1.1 400 Bad Request"], done.stdout
    world.wait_log(r"bad handshake: (both Content-Length|Content-Length given|bare LF|CONNECT w)")


def test_log_lines_and_counters(world: ProxyWorld) -> None:
    # This test's own line, not an earlier test's: their tunnels may end after their clients.
    closed = rf" socks5 to=web\.{NAME}:{HTTP_PORT} .*: closed"
    before = len(world.wait_log(closed, count=0))
    done = world.curl("-x", f"socks5h://{PROXY}", f"http://web.{NAME}:{HTTP_PORT}/bytes/1000", "-o", "/dev/null")
    assert done.returncode == 0, done.stderr
    line = world.wait_log(closed, count=before + 1)[-1]
    assert line.startswith(f"client={ALICE}:")
    assert f" socks5 to=web.{NAME}:{HTTP_PORT} addr={TARGET4}:{HTTP_PORT} " in line
    assert " down=10" in line and " up=" in line and " time=" in line
    stats = world.stats()  # written every 2 s while things change; once at start
    assert stats["name"] == NAME and stats["listen"] == PROXY
    assert stats["total"] >= 1 and stats["active"] >= 0


def test_sigterm_stops_cleanly_and_writes_the_counters(world: ProxyWorld) -> None:
    done = world.curl("-x", f"socks5h://{PROXY}", f"http://web.{NAME}:{HTTP_PORT}/")
    assert done.returncode == 0, done.stderr
    pid = world.proxy_pid()
    world.fake.run("kill", "-TERM", str(pid))
    world.wait_log(f"{NAME}: stopping")
    assert world.stop_proxy(None) == 0  # `timeout`, the proxy's parent, passes it on
    stats = world.stats()
    assert stats["active"] == 0 and stats["total"] >= 1
    assert stats["ended"].get("closed", 0) >= 1
    world.start_proxy()  # for whatever runs after
