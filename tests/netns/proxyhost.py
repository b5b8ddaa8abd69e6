"""The proxy's test world, built inside a throwaway fake host (fakehost.py):

    tsp-client                   fake host ("the host")              ts-fgpu ("the tailnet's ns")
    eth0 100.80.0.2-4/24 ─ veth ─ tsp-cl 100.80.0.1/24  <- listener  tsproxy proxy fgpu (inherits
         192.0.2.2/24             192.0.2.1/24                        the listener, dials here)
                                  ts-fgpu 10.200.3.5/30 ─── veth ─── eth0 10.200.3.6/30 (default)
                                  lo 198.51.100.1 (off the tailnet,    tailscale0 100.70.0.1/16
                                  reachable from ts-fgpu by its         fd7a:115c:a1e0::1/64
                                  default route)                              │ veth
                                                                        tsp-target eth0 100.70.0.2
                                                                        fd7a:115c:a1e0::2, and on lo
                                                                        100.100.100.100 and ::53

The listening socket is made in the fake host by Debian's systemd-socket-activate, which
execs (same pid, LISTEN_PID stays right) `nsenter --net=/run/netns/ts-fgpu` and that the
proxy: exactly the hand-over systemd does with NetworkNamespacePath=, lazily on the first
connection as a socket unit does. Fake tailscaled LocalAPIs answer on the paths a real
install uses: /run/tsproxy/fgpu/tailscaled.sock (names) and /run/tailscale/tailscaled.sock
(the host's tailscaled, for identities); /run is the fake host's own tmpfs.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fakehost import REPO, TIMEOUT, FakeHost, real_traces

sys.path.insert(0, str(REPO / "tests"))
from fake_localapi import make_node, make_status, make_whois

HERE = Path(__file__).resolve().parent
NAME = "fgpu"
GATEWAY = f"ts-{NAME}"
CLIENT = "tsp-client"
TARGET = "tsp-target"
PROXY_IP, PROXY_PORT = "100.80.0.1", 1080
PROXY = f"{PROXY_IP}:{PROXY_PORT}"
ALICE, OPS, STRANGER, OUTSIDER = "100.80.0.2", "100.80.0.3", "100.80.0.4", "192.0.2.2"
TARGET4, TARGET6 = "100.70.0.2", "fd7a:115c:a1e0::2"
GATEWAY_TS = "100.70.0.1"
VETH_SUBNET, VETH_HOST = "10.200.3.4/30", "10.200.3.5"
OFF_TAILNET = "198.51.100.1"
HTTP_PORT, ECHO_PORT, BANNER_PORT = 8080, 9000, 2222
CLOSED_PORT, UNREACHABLE_PORT, SILENT_PORT = 9999, 9997, 9998
NAMES_SOCKET = f"/run/tsproxy/{NAME}/tailscaled.sock"
IDENTITY_SOCKET = "/run/tailscale/tailscaled.sock"

TOPOLOGY = f"""
set -eu
ip link set lo up
for ns in {CLIENT} {GATEWAY} {TARGET}; do ip netns add $ns; ip -n $ns link set lo up; done

ip link add tsp-cl type veth peer name eth0 netns {CLIENT}
ip addr add {PROXY_IP}/24 dev tsp-cl
ip addr add 192.0.2.1/24 dev tsp-cl
ip link set tsp-cl up
for a in {ALICE} {OPS} {STRANGER}; do ip -n {CLIENT} addr add $a/24 dev eth0; done
ip -n {CLIENT} addr add {OUTSIDER}/24 dev eth0
ip -n {CLIENT} link set eth0 up
ip -n {CLIENT} route add default via {PROXY_IP} src {ALICE}

ip link add {GATEWAY} type veth peer name eth0 netns {GATEWAY}
ip addr add {VETH_HOST}/30 dev {GATEWAY}
ip link set {GATEWAY} up
ip -n {GATEWAY} addr add 10.200.3.6/30 dev eth0
ip -n {GATEWAY} link set eth0 up
ip -n {GATEWAY} route add default via {VETH_HOST}
ip addr add {OFF_TAILNET}/32 dev lo

ip -n {GATEWAY} link add tailscale0 type veth peer name eth0 netns {TARGET}
ip -n {GATEWAY} addr add {GATEWAY_TS}/16 dev tailscale0
ip -n {GATEWAY} addr add fd7a:115c:a1e0::1/64 dev tailscale0 nodad
ip -n {GATEWAY} link set tailscale0 up
ip -n {TARGET} addr add {TARGET4}/16 dev eth0
ip -n {TARGET} addr add {TARGET6}/64 dev eth0 nodad
ip -n {TARGET} addr add 100.100.100.100/32 dev lo
ip -n {TARGET} addr add fd7a:115c:a1e0::53/128 dev lo
ip -n {TARGET} link set eth0 up
# Tailscale's service addresses, reachable through tailscale0 as they would be: only the
# egress policy stands between a client and them.
ip -n {GATEWAY} route add 100.100.100.100/32 via {TARGET4} dev tailscale0
ip -n {GATEWAY} route add fd7a:115c:a1e0::53/128 via {TARGET6} dev tailscale0
ip netns exec {TARGET} nft -f - <<'EOF'
table inet target {{
    chain input {{
        type filter hook input priority 0;
        tcp dport {UNREACHABLE_PORT} reject with icmpx type host-unreachable
        tcp dport {SILENT_PORT} drop
    }}
}}
EOF
"""

STATUS = make_status(
    "gw", [GATEWAY_TS, "fd7a:115c:a1e0::1"],
    peers=[make_node("web", [TARGET4, TARGET6]), make_node("web6", [TARGET6]),
           make_node("quad", ["100.100.100.100"]),
           make_node("gpu-box", [TARGET4], hostname="GPU")])
DNS = {"example.test": [TARGET4], "down.test": "SERVFAIL"}
# As tailscaled >= 1.78 answers LocalAPI usermetrics (tsnet's usermetric package).
USERMETRICS = """\
# TYPE tailscaled_inbound_bytes_total counter
# HELP tailscaled_inbound_bytes_total Counts the number of bytes received from other peers
tailscaled_inbound_bytes_total{path="direct_ipv4"} 1234
tailscaled_inbound_bytes_total{path="derp"} 56
# TYPE tailscaled_health_messages gauge
# HELP tailscaled_health_messages Number of health messages broken down by type.
tailscaled_health_messages{type="warning"} 0
"""
WHOIS = {ALICE: make_whois("alice@example.com", "alice-laptop", [ALICE]),
         OPS: make_whois("ops@example.com", "ci", [OPS], tags=["tag:ops"])}


class ProxyWorld:
    """The namespaces, target servers and fake LocalAPIs; proxies come and go per test."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.fake = FakeHost(workdir)
        self.proxy: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "proxy.log"
        self.stats_path = workdir / "stats.json"

    def build(self) -> None:
        self.fake.sh(TOPOLOGY)
        self.fake.spawn("ip", "netns", "exec", TARGET, sys.executable, str(HERE / "targets.py"))
        # The same servers on the gateway's loopback and the fake host's addresses: things a
        # rebinding name or a missing egress check would reach.
        self.fake.spawn("ip", "netns", "exec", GATEWAY, sys.executable, str(HERE / "targets.py"))
        self.fake.spawn(sys.executable, str(HERE / "targets.py"))
        self.localapi(NAMES_SOCKET, {"status": STATUS, "dns": DNS, "usermetrics": USERMETRICS})
        self.localapi(IDENTITY_SOCKET, {"whois": WHOIS})

    def localapi(self, path: str, table: dict[str, Any]) -> None:
        table_path = self.workdir / f"localapi-{len(self.fake.servers)}.json"
        table_path.write_text(json.dumps(table))
        # fake_localapi.py prints nothing: report readiness once its socket exists.
        self.fake.spawn("sh", "-c", f'mkdir -p {os.path.dirname(path)}; '
                        f'{sys.executable} {REPO}/tests/fake_localapi.py {path} {table_path} & '
                        f'while [ ! -S {path} ]; do sleep 0.02; done; echo ready; wait')

    def close(self) -> None:
        self.stop_proxy()
        self.fake.close()

    # -- the proxy -------------------------------------------------------------------------

    def start_proxy(self, conf: str = "", *args: str, wrapper: tuple[str, ...] = (),
                    forwards: tuple[str, ...] = ()) -> None:
        """Socket-activate `tsproxy proxy fgpu` with the conf's extra lines `conf`; `wrapper`
        (e.g. prlimit) runs between systemd-socket-activate and the proxy, exec'ing too.
        `forwards` ("PORT/tcp", "PORT/udp"): the forwards' sockets too, on the proxy's
        address, handed over at once by activate.py (systemd-socket-activate cannot mix
        stream and datagram sockets)."""
        self.stop_proxy()
        (self.fake.conf_dir / f"{NAME}.conf").write_text(
            f"listen = {PROXY}\nveth_subnet = {VETH_SUBNET}\n{conf}")
        self.log_path.write_bytes(b"")
        self.stats_path.unlink(missing_ok=True)
        activate = ["systemd-socket-activate", "-l", PROXY]
        if forwards:
            activate = [sys.executable, str(HERE / "activate.py"), "-l", PROXY]
            for forward in forwards:
                port, _, protocol = forward.partition("/")
                activate += ["-l" if protocol == "tcp" else "-d", f"{PROXY_IP}:{port}"]
        command = [
            "nsenter", f"--target={self.fake.holder.pid}", "--net", "--mount", "--",
            "timeout", "300", *activate,
            "-E", f"PYTHONPATH={REPO}", "-E", f"TSPROXY_CONF_DIR={self.fake.conf_dir}",
            "-E", "PYTHONDONTWRITEBYTECODE=1", *(["--"] if forwards else []), *wrapper,
            "nsenter", f"--net=/run/netns/{GATEWAY}", "--",
            sys.executable, "-m", "tsproxy", "proxy", NAME, "--stats", str(self.stats_path),
            *args]
        with open(self.log_path, "wb") as log:
            self.proxy = subprocess.Popen(command, stdout=log, stderr=log,
                                          start_new_session=True)
        # activate.py starts the proxy at once: wait until it has read its conf.
        self.wait_log(r"proxy listening on" if forwards else r"Listening on")

    def stop_proxy(self, sig: int | None = signal.SIGKILL) -> int | None:
        """Stop the proxy (SIGKILL: the whole group; None: it is stopping by itself) and
        return its exit status."""
        if self.proxy is None:
            return None
        proxy, self.proxy = self.proxy, None
        if sig is not None:
            os.killpg(proxy.pid, sig)
        return proxy.wait(TIMEOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, pattern: str, count: int = 1, timeout: float = TIMEOUT) -> list[str]:
        """The log lines matching `pattern`, once there are `count` of them."""
        deadline = time.monotonic() + timeout
        while True:
            lines = [line for line in self.log().splitlines() if re.search(pattern, line)]
            if len(lines) >= count:
                return lines
            if time.monotonic() > deadline:
                raise AssertionError(f"no {count} log line(s) like {pattern!r}:\n{self.log()}")
            time.sleep(0.05)

    def stats(self) -> dict[str, Any]:
        return dict(json.loads(self.stats_path.read_text()))

    def wait_stats(self, check: Callable[[dict[str, Any]], bool],
                   timeout: float = TIMEOUT) -> dict[str, Any]:
        """The counters file once `check` holds (it is rewritten every 2 s while busy)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                stats = self.stats()
                if check(stats):
                    return stats
            except (OSError, ValueError):
                stats = {}
            if time.monotonic() > deadline:
                raise AssertionError(f"counters never matched: {stats}")
            time.sleep(0.1)

    def proxy_pid(self) -> int:
        """The pid of the proxy process itself (the one systemd-socket-activate became).
        Looked for in the session start_proxy made: a booted container of another test on
        this machine runs a `tsproxy proxy fgpu` too, and must not get this test's signals."""
        self.wait_log(r"proxy listening on")
        assert self.proxy is not None
        done = self.fake.run("pgrep", "-f", "-n", "-s", str(self.proxy.pid),
                             f"tsproxy proxy {NAME}")
        return int(done.stdout.split()[0])

    # -- clients ---------------------------------------------------------------------------

    def client(self, *argv: str, timeout: float = 20,
               input: str | None = None) -> subprocess.CompletedProcess[str]:
        return self.fake.run("ip", "netns", "exec", CLIENT, *argv, check=False,
                             timeout=timeout, input=input)

    def curl(self, *args: str, max_time: float = 10) -> subprocess.CompletedProcess[str]:
        return self.client("curl", "-sS", "--max-time", str(max_time), *args,
                           timeout=max_time + 10)

    def python(self, code: str, *args: str, timeout: float = 30) -> str:
        done = self.client(sys.executable, "-c", code, *args, timeout=timeout)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def background(self, *argv: str) -> subprocess.Popen[str]:
        """A client process in the client namespace, stdin and stdout piped."""
        return subprocess.Popen(
            ["nsenter", f"--target={self.fake.holder.pid}", "--net", "--mount", "--",
             "ip", "netns", "exec", CLIENT, *argv],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True)

    @contextmanager
    def hold(self, count: int, source: str = ALICE, wait: float = 10) -> Iterator[list[str]]:
        """`count` SOCKS5 tunnels to the echo server, open until the block ends; yields the
        REP of each ("0" for an open tunnel)."""
        holder = self.background(sys.executable, str(HERE / "flood.py"), "hold", PROXY_IP,
                                 str(PROXY_PORT), TARGET4, str(ECHO_PORT), str(count), source,
                                 str(wait))
        try:
            assert holder.stdout is not None and holder.stdin is not None
            line = holder.stdout.readline().split()
            assert line and line[0] == "held", line
            yield line[2].split(",")
        finally:
            if holder.stdin is not None:
                holder.stdin.close()
            try:
                holder.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(holder.pid, signal.SIGKILL)
                holder.wait(TIMEOUT)

    def raw(self, protocol: str, host: str, port: int, *options: str) -> dict[str, Any]:
        done = self.client(sys.executable, str(HERE / "rawclient.py"), PROXY_IP,
                           str(PROXY_PORT), protocol, host, str(port), *options)
        assert done.returncode == 0, done.stderr
        return dict(json.loads(done.stdout))


@contextmanager
def proxy_world(workdir: Path) -> Iterator[ProxyWorld]:
    before = real_traces()
    world = ProxyWorld(workdir)
    try:
        world.build()
        yield world
    finally:
        world.close()
    # Whatever the tests did, the machine running them saw none of it.
    assert real_traces() == before
