"""A throwaway "host" for testing `tsproxy up`/`down` without touching the real machine.

The fake host is a new network namespace (its own links, routes, nftables ruleset and
ip_forward) plus a private mount namespace in which /run is a tmpfs (so /run/netns and
/run/systemd/resolve are its own) and /etc an overlay (so /etc/netns and /etc/resolv.conf
writes land in that tmpfs). A holder process keeps both alive; everything else enters them
with nsenter (which starts commands in / of the fake host: paths given to them are
absolute). When the holder goes, so does everything made inside.

Its network, all TEST-NET addresses that exist only in here:

    inet-a  198.51.100.2 --- up-a 198.51.100.1   (default route: "internet A")
    inet-b  203.0.113.2  --- up-b 203.0.113.1    (only 203.0.113.0/24: "internet B")
    tailscale0 100.64.0.1, a tun like the real one, standing in for the host's tailscaled

with a whoami server (it answers with the client's address) in each internet and on the
fake host itself.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
WHOAMI = Path(__file__).resolve().with_name("whoami.py")
PORT = 8080
# Each uplink: fake host side, internet side, prefix length.
UPLINKS = {"a": ("198.51.100.1", "198.51.100.2", 24), "b": ("203.0.113.1", "203.0.113.2", 24)}
TAILSCALE_IP = "100.64.0.1"
OUR_NAMES = ("ts-", "inet-", "up-", "tailscale0", "tsproxy-")
FORWARDING = "/run/tsproxy/forwarding.json"  # who holds the host's forwarding
TIMEOUT = 20  # seconds for any one command; each takes a small fraction of that

# Run by the holder: make the mounts private to the fake host, report, then wait for stdin
# to close (it does when the test ends, or when pytest dies).
HOLDER = """
set -eu
mount -t tmpfs tsproxy-fakehost /run
mkdir /run/.etc-upper /run/.etc-work
mount -t overlay tsproxy-fakehost \
    -o lowerdir=/etc,upperdir=/run/.etc-upper,workdir=/run/.etc-work /etc
echo ready
exec cat >/dev/null
"""

NETWORK = """
set -eu
ip link set lo up
for side in a b; do
    ip netns add inet-$side
    ip link add up-$side type veth peer name eth0 netns inet-$side
    ip -n inet-$side link set lo up
    ip -n inet-$side link set eth0 up
    ip link set up-$side up
done
ip addr add {a[0]}/{a[2]} dev up-a
ip -n inet-a addr add {a[1]}/{a[2]} dev eth0
ip addr add {b[0]}/{b[2]} dev up-b
ip -n inet-b addr add {b[1]}/{b[2]} dev eth0
ip route add default via {a[1]}
ip tuntap add tailscale0 mode tun
ip addr add {ts}/32 dev tailscale0
ip link set tailscale0 up
# The host's resolver: a loopback stub first, which the namespace cannot use.
rm -f /etc/resolv.conf
printf 'nameserver %s\\n' 127.0.0.53 {a[1]} 2001:db8::53 {b[1]} >/etc/resolv.conf
""".format(a=UPLINKS["a"], b=UPLINKS["b"], ts=TAILSCALE_IP)


class FakeHost:
    """One fake host; `close` ends it and everything in it."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.conf_dir = workdir / "tsproxy.d"
        self.conf_dir.mkdir()
        self.tailscaled = workdir / "tailscaled"
        self.tailscaled.write_text("#!/bin/sh\n")
        self.tailscaled.chmod(0o755)
        self.servers: list[subprocess.Popen[str]] = []
        self.holder = subprocess.Popen(
            ["unshare", "--net", "--mount", "--propagation", "private", "sh", "-c", HOLDER],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        _wait_ready(self.holder)

    def close(self) -> None:
        for server in self.servers:
            # The whole group: `timeout` and `ip netns exec` leave their children behind.
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(TIMEOUT)
        assert self.holder.stdin is not None
        self.holder.stdin.close()
        self.holder.wait(TIMEOUT)

    # -- running things inside -----------------------------------------------------------

    def run(self, *argv: str, check: bool = True, env: dict[str, str] | None = None,
            input: str | None = None, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            ["nsenter", f"--target={self.holder.pid}", "--net", "--mount", "--", *argv],
            input=input, capture_output=True, text=True, timeout=timeout, env=env)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr}")
        return done

    def sh(self, script: str) -> str:
        return self.run("sh", "-euc", script).stdout

    def spawn(self, *argv: str) -> None:
        """Start a server that prints a line once it listens; it dies with the test."""
        server = subprocess.Popen(
            ["nsenter", f"--target={self.holder.pid}", "--net", "--mount", "--",
             "timeout", "300", *argv], stdout=subprocess.PIPE, text=True, start_new_session=True)
        self.servers.append(server)
        _wait_ready(server)

    def whoami(self, ns: str | None, address: str) -> None:
        """Serve whoami on address from inside ns (None: the fake host itself)."""
        self.spawn(*_inside(ns), sys.executable, str(WHOAMI), address, str(PORT))

    def tsproxy(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run(sys.executable, "-m", "tsproxy", *args, check=False, env=self._env())

    def start_tsproxy(self, *args: str) -> subprocess.Popen[str]:
        """`tsproxy ARGS` in the background, beside others."""
        return subprocess.Popen(
            ["nsenter", f"--target={self.holder.pid}", "--net", "--mount", "--",
             sys.executable, "-m", "tsproxy", *args], env=self._env(),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def _env(self) -> dict[str, str]:
        return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(REPO),
                "TSPROXY_CONF_DIR": str(self.conf_dir), "TSPROXY_TAILSCALED": str(self.tailscaled)}

    def curl(self, ns: str | None, address: str,
             timeout: float = 5) -> subprocess.CompletedProcess[str]:
        """GET the whoami server at address from inside ns (None: the fake host itself)."""
        return self.run(*_inside(ns), "curl", "-sS", "--noproxy", "*",
                        "--connect-timeout", str(timeout), "--max-time", str(timeout + 1),
                        f"http://{address}:{PORT}/", check=False, timeout=timeout + TIMEOUT)

    def source_seen(self, ns: str | None, address: str) -> str:
        """The source address the server at address saw for a connection from ns."""
        done = self.curl(ns, address)
        assert done.returncode == 0, f"{ns} -> {address}: {done.stderr}"
        return done.stdout.strip()

    # -- building and observing ----------------------------------------------------------

    def build_network(self) -> None:
        self.sh(NETWORK)
        for side, (_host, internet, _prefix) in UPLINKS.items():
            self.whoami(f"inet-{side}", internet)
        self.whoami(None, "0.0.0.0")

    def add_instance(self, name: str, subnet: str, port: int) -> None:
        conf = f"listen = {TAILSCALE_IP}:{port}\nveth_subnet = {subnet}\n"
        (self.conf_dir / f"{name}.conf").write_text(conf)

    def json(self, *argv: str) -> Any:
        return json.loads(self.run(*argv).stdout or "null")

    def state(self) -> dict[str, Any]:
        """What `up` may change, normalised to what must stay equal between two looks."""
        netns = sorted(ns["name"] for ns in self.json("ip", "-j", "netns", "list") or [])
        return {
            "netns": netns,
            "links": _links(self.json("ip", "-j", "addr")),
            "routes": self.json("ip", "-j", "-4", "route", "show", "table", "all"),
            "nft": _ruleset(self.json("nft", "-j", "list", "ruleset")),
            "etc_netns": self.sh("cd /etc && find netns 2>/dev/null | sort || true").split(),
            "ipv4_sysctls": self.sysctls(),
            "forwarding_record": self.run("test", "-e", FORWARDING, check=False).returncode == 0,
            "in_namespaces": {ns: {"links": _links(self.json("ip", "-n", ns, "-j", "addr")),
                                   "routes": self.json("ip", "-n", ns, "-j", "route")}
                              for ns in netns if ns.startswith("ts-")},
        }

    def read(self, path: str) -> str:
        return self.run("cat", path).stdout

    def sysctls(self) -> dict[str, str]:
        """ip_forward and what writing it resets: every conf/*/forwarding and
        accept_redirects."""
        lines = self.sh("cd /proc/sys/net/ipv4 && grep -H . ip_forward conf/*/forwarding "
                        "conf/*/accept_redirects").splitlines()
        return dict(line.split(":", 1) for line in lines)


def _inside(ns: str | None) -> list[str]:
    return ["ip", "netns", "exec", ns] if ns else []


def _wait_ready(process: subprocess.Popen[str]) -> None:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], TIMEOUT)
    line = process.stdout.readline() if ready else ""
    if not line:
        process.kill()
        raise AssertionError(f"{process.args!r} did not start")


def _links(addresses: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # IPv6 link-local addresses come and go through duplicate address detection, and
    # operstate follows carrier with a lag: neither is ours to compare.
    links = []
    for link in addresses:
        link = {k: v for k, v in link.items() if k != "operstate"}
        link["addr_info"] = [a for a in link.get("addr_info", []) if a.get("scope") != "link"]
        links.append(link)
    return links


def _ruleset(listing: dict[str, Any]) -> list[Any]:
    # Handles are renumbered when `up` replaces its table and counters count the test's
    # own traffic; the rules themselves must be equal.
    return [_strip(item) for item in listing["nftables"] if "metainfo" not in item]


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        if "counter" in value and isinstance(value["counter"], dict):
            return {"counter": None}
        return {k: _strip(v) for k, v in value.items() if k != "handle"}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def real_traces() -> dict[str, Any]:
    """What a leak out of the fake host would change on the real machine. Only the names
    the tests use: other work on the machine may come and go meanwhile."""
    def out(*argv: str) -> list[str]:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT)
        return [word for word in done.stdout.split() if word.startswith(OUR_NAMES)]

    def read(path: str) -> str | None:
        try:
            return Path(path).read_text()
        except OSError:
            return None
    return {
        "netns": out("ip", "netns", "list"),
        "links": out("ip", "-br", "link"),
        "tables": out("nft", "list", "tables"),
        "files": {path: read(path)
                  for path in ("/etc/resolv.conf", "/run/systemd/resolve/resolv.conf")},
        "dirs": [path for path in ("/etc/netns", "/run/netns") if os.path.exists(path)],
    }
