"""Limits and bad clients: connection caps with clean refusals, handshake and idle timeouts,
resets mid-handshake, running out of file descriptors, and a burst of bad clients that must
leave good clients served."""

from __future__ import annotations

import sys
import time

import pytest
from proxyhost import (
    ALICE,
    ECHO_PORT,
    HERE,
    HTTP_PORT,
    NAME,
    OPS,
    PROXY,
    PROXY_IP,
    PROXY_PORT,
    TARGET4,
    ProxyWorld,
)

pytestmark = pytest.mark.netns


def good(world: ProxyWorld, source: str = ALICE) -> bool:
    done = world.curl("--interface", source, "-x", f"socks5h://{PROXY}",
                      f"http://web.{NAME}:{HTTP_PORT}/", max_time=5)
    return done.returncode == 0 and done.stdout.strip() == "100.70.0.1"


# -- caps -----------------------------------------------------------------------------------

def test_per_client_cap(world: ProxyWorld) -> None:
    world.start_proxy("max_connections_per_client = 3\n")
    with world.hold(3) as replies:
        assert replies == ["0", "0", "0"]
        assert world.raw("socks5", TARGET4, ECHO_PORT)["rep"] == 2
        answer = world.raw("http", TARGET4, ECHO_PORT)
        assert answer["status"] == 503 and answer["after"] == ""
        # Another client is not held back by this one.
        assert world.raw("socks5", TARGET4, ECHO_PORT, "--source", OPS)["rep"] == 0
    world.wait_log("too many connections from this client", count=2)
    # Slots come back when the tunnels close.
    deadline = time.monotonic() + 5
    while not good(world) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert good(world)
    world.wait_stats(lambda stats: stats["refused"].get("caps") == 2)


def test_global_cap(world: ProxyWorld) -> None:
    world.start_proxy("max_connections = 3\n")
    with world.hold(3) as replies:
        assert replies == ["0", "0", "0"]
        assert world.raw("socks5", TARGET4, ECHO_PORT, "--source", OPS)["rep"] == 1
        assert world.raw("http", TARGET4, ECHO_PORT, "--source", OPS)["status"] == 503
    assert "refused (REP 1): too many connections" in world.wait_log(rf"client={OPS}:")[0]


# -- timeouts -------------------------------------------------------------------------------

TRICKLE = """
import socket, sys, time
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
start = time.monotonic()
try:
    for byte in bytes.fromhex(sys.argv[3]):
        sock.sendall(bytes([byte]))
        time.sleep(0.3)
    print("sent it all", sock.recv(100))
except OSError as error:
    print("closed by the proxy after", round(time.monotonic() - start, 1), type(error).__name__)
"""


@pytest.mark.parametrize("slowly", [b"\x05\x01\x00\x05\x01\x00\x01dF\x00\x02#(",
                                    b"CONNECT web.fgpu:9000 HTTP/1.1\r\n\r\n"])
def test_handshake_timeout_ends_trickling_clients(world: ProxyWorld, slowly: bytes) -> None:
    world.start_proxy("", "--handshake-timeout", "1")
    out = world.python(TRICKLE, PROXY_IP, str(PROXY_PORT), slowly.hex())
    assert out.startswith("closed by the proxy after 1."), out
    assert world.wait_log(": handshake timeout: not complete within 1 s$")
    assert good(world)


def test_handshake_timeout_is_ten_seconds_by_default() -> None:
    sys.path.insert(0, str(HERE.parents[1]))
    from tsproxy.proxy import egress, relay, server
    assert server.HANDSHAKE_TIMEOUT == 10 and egress.DIAL_TIMEOUT == 10
    assert relay.IDLE_TIMEOUT == 2 * 3600


IDLE = """
import socket, sys, time
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
sock.sendall(b"\\x05\\x01\\x00\\x05\\x01\\x00\\x01" + socket.inet_aton(sys.argv[3])
             + int(sys.argv[4]).to_bytes(2, "big"))
assert sock.recv(2) == b"\\x05\\x00" and sock.recv(10)[1] == 0
start = time.monotonic()
for _ in range(6):  # busy for 1.8 s: more than the idle timeout, never idle that long
    sock.sendall(b"x")
    assert sock.recv(1) == b"x"
    time.sleep(0.3)
busy = time.monotonic() - start
print("busy", round(busy, 1), "then closed after", end=" ")
start = time.monotonic()
print(sock.recv(1), round(time.monotonic() - start, 1))
"""


def test_idle_tunnels_are_closed_busy_ones_are_not(world: ProxyWorld) -> None:
    world.start_proxy("", "--idle-timeout", "1")
    out = world.python(IDLE, PROXY_IP, str(PROXY_PORT), TARGET4, str(ECHO_PORT))
    words = out.split()
    assert words[:2] == ["busy", "1.8"] and words[-2] == "b''", out
    # The last byte went by 0.3 s before the client started waiting.
    assert 0.9 <= 0.3 + float(words[-1]) <= 1.6, out
    assert world.wait_log(r": idle timeout$")


# -- resets and bad clients -----------------------------------------------------------------

RESET = """
import socket, struct, sys
for data in (b"\\x05", b"\\x05\\x01\\x00", b"\\x05\\x01\\x00\\x05\\x01"):
    sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
    sock.sendall(data)
    if len(data) == 3:
        sock.recv(2)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
print("reset 3")
"""


def test_reset_mid_handshake(world: ProxyWorld) -> None:
    world.start_proxy()
    assert world.python(RESET, PROXY_IP, str(PROXY_PORT)) == "reset 3\n"
    lines = world.wait_log("bad handshake", count=3)
    assert all(line.endswith(": bad handshake: Connection reset by peer mid-handshake")
               for line in lines), lines
    assert good(world)
    world.wait_stats(lambda stats: stats["active"] == 0
                     and stats["refused"].get("bad handshake") == 3)


def test_burst_of_bad_clients_leaves_good_clients_served(world: ProxyWorld) -> None:
    world.start_proxy("", "--handshake-timeout", "2")
    assert good(world)
    pid = world.proxy_pid()
    flood = world.background(sys.executable, str(HERE / "flood.py"), "bad", PROXY_IP,
                             str(PROXY_PORT), "5000", "500")
    served = 0
    try:
        while flood.poll() is None:
            # Good clients during the flood: each answered within its 5 s.
            assert good(world, OPS)
            served += 1
        assert flood.stdout is not None
        assert flood.stdout.read() == "done 5000\n"
    finally:
        if flood.poll() is None:
            flood.kill()
    assert served >= 1
    assert good(world) and world.proxy_pid() == pid
    world.wait_stats(lambda stats: stats["active"] == 0 and stats["total"] >= 5000)
    assert "Traceback" not in world.log() and "internal error" not in world.log()


def test_out_of_file_descriptors(world: ProxyWorld) -> None:
    # 32 descriptors: the proxy's own dozen or so, then two per tunnel. The tunnels beyond
    # wait in the backlog (accepting pauses) or get REP 1 (no socket for the dial).
    world.start_proxy("", wrapper=("prlimit", "--nofile=32:32"))
    assert good(world)
    with world.hold(20, wait=2) as replies:
        assert replies.count("0") >= 5
        assert set(replies) <= {"0", "1", "TimeoutError"}, replies
        world.wait_log("accepting paused|socket: Too many open files")
    # Once the tunnels are gone, everything works again; the proxy never died.
    deadline = time.monotonic() + 10
    while not good(world) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert good(world)
    assert "Traceback" not in world.log()
