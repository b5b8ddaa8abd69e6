"""The offline lab's world, on the test machine, in network namespaces of its own.

    world    the Go harness (tests/lab/controlplane): control servers of tailnets "home" and
             "fgpu" and one DERP+STUN relay, all on WORLD_IP; it routes between its links
    mac      a client laptop on "home" (tailscaled, kernel TUN): curl, dig, ssh, Chromium
    mac2     a second home client, a different user: the one allow_identities leaves out
    web      a server on "fgpu": tailscaled and `python3 -m http.server` on :3000
    ssh      a server on "fgpu": tailscaled and Debian's sshd (key auth) on :22

Each node namespace has one veth to the world namespace (10.77.K.2/24, default route via
10.77.K.1); the gateway container gets one too (see plug()). Nothing is routed anywhere
else, no address of the machine's own network is used, and every tailscaled runs in a mount
namespace of its own whose /etc/resolv.conf is a file of the lab's: whatever it decides
about DNS, the machine's resolv.conf is out of its reach.

The world outlives the gateway (the control servers' state is in memory): rebooting the
gateway container is then a reboot of the gateway only, as with Tailscale's real control.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import labtools

WORLD_IP = "203.0.113.1"  # TEST-NET-3: exists only in the world namespace
LINKS = {"gw": 1, "mac": 2, "mac2": 3, "web": 4, "ssh": 5}
WEB_PAGE = "hello from web, a peer on the fgpu tailnet\n"

# The environment of Tailscale's own integration tests (tstest/integration), for every
# tailscaled of the lab, the gateway's included: see tests/lab/controlplane/main.go.
TS_ENV = {
    "TS_NO_LOGS_NO_SUPPORT": "true",
    "TS_DISABLE_PORTMAPPER": "1",
    "TS_PANIC_IF_HIT_MAIN_CONTROL": "1",
    "TS_ASSUME_NETWORK_UP_FOR_TEST": "1",
}


def stop_group(proc: subprocess.Popen, timeout: float = 10) -> None:
    """SIGTERM the process group `proc` leads, SIGKILL what is left after `timeout`, and
    return only once no process of the group is left (not just its leader)."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            proc.poll()
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                proc.wait()
                return
            time.sleep(0.05)
    raise AssertionError(f"process group {proc.pid} survived SIGKILL")


def sh(cmd: list[str] | str, check: bool = True, timeout: float = 60, **kw: Any) -> subprocess.CompletedProcess:
    argv = ["sh", "-c", cmd] if isinstance(cmd, str) else cmd
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{shlex.join(argv)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return proc


def wait_for(check: Callable[[], Any], timeout: float = 60, interval: float = 0.3, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


@dataclass
class Node:
    """A tailscaled in namespace `ns`, its state and socket under `dir`."""

    name: str
    ns: str
    dir: Path
    world: World
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def sock(self) -> Path:
        return self.dir / "tailscaled.sock"

    def exec(self, argv: list[str], **kw: Any) -> subprocess.CompletedProcess:
        """Run a command in this node's network namespace."""
        return sh(["ip", "netns", "exec", self.ns, *argv], **kw)

    def spawn(self, name: str, script: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        """A long-running process in this node's namespace, in a private mount namespace
        whose /etc/resolv.conf is the lab's (and, for sshd, with a /run of its own)."""
        log = (self.dir / f"{name}.log").open("ab")
        argv = ["ip", "netns", "exec", self.ns, "unshare", "-m", "--propagation", "private",
                "sh", "-c", f"mount --bind {self.world.dir}/resolv.conf /etc/resolv.conf && {script}"]
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **(env or {})},
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def start_tailscaled(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.spawn("tailscaled", shlex.join([
            str(self.world.tailscaled), f"--statedir={self.dir}", f"--socket={self.sock}",
            "--tun=tailscale0", "--port=0"]),
            env={**TS_ENV, "TS_NETCHECK_GENERATE_204_URL": f"{self.world.state['home_url']}/generate_204"})
        wait_for(lambda: self.sock.exists(), 20, what=f"{self.name}'s tailscaled socket")

    def tailscale(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        return sh([str(self.world.tailscale), f"--socket={self.sock}", *args], check=check, timeout=timeout)

    def status(self) -> dict[str, Any]:
        out = self.tailscale("status", "--json", check=False).stdout
        return json.loads(out) if out.strip() else {}

    def login_name(self) -> str:
        """The login name of this node's user (testcontrol makes one user per node)."""
        status = self.status()
        return status["User"][str(status["Self"]["UserID"])]["LoginName"]

    def ip4(self) -> str:
        return self.tailscale("ip", "-4").stdout.strip()

    def login_home(self) -> None:
        """The interactive login, as a person does it: `tailscale up` prints a URL, the
        browser on this machine opens it (here: curl), and the node is in."""
        up = subprocess.Popen([str(self.world.tailscale), f"--socket={self.sock}", "up", "--accept-dns=false",
                               f"--hostname={self.name}", f"--login-server={self.world.state['home_url']}"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            url = wait_for(lambda: self.status().get("AuthURL"), 30, what=f"{self.name}'s login URL")
            self.exec(["curl", "-fsS", "-m", "10", url])
            out, _ = up.communicate(timeout=60)
            assert up.returncode == 0, out
        finally:
            if up.poll() is None:
                up.kill()
                up.wait()

    def login_fgpu(self) -> None:
        self.tailscale("up", "--accept-dns=false", f"--hostname={self.name}",
                       f"--login-server={self.world.state['fgpu_url']}",
                       f"--auth-key={self.world.state['fgpu_authkey']}", "--timeout=60s", timeout=90)

    def stop(self) -> None:
        for proc in self.procs:
            stop_group(proc)
        self.procs.clear()


class World:
    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.id = uuid.uuid4().hex[:6]
        self.world_ns = f"tslab-{self.id}-world"
        self.tailscaled, self.tailscale = labtools.tailscale_binaries()
        self.nodes: dict[str, Node] = {}
        self.state: dict[str, Any] = {}
        self.harness: subprocess.Popen | None = None
        self.namespaces: list[str] = []

    def ns(self, name: str) -> str:
        return f"tslab-{self.id}-{name}"

    def _add_ns(self, name: str) -> None:
        sh(["ip", "netns", "add", name])
        self.namespaces.append(name)
        sh(["ip", "-n", name, "link", "set", "lo", "up"])

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        # The resolv.conf every lab process sees: nothing answers there, by design.
        (self.dir / "resolv.conf").write_text("# tsproxy lab: no resolver\nnameserver 127.0.0.53\n")
        self._add_ns(self.world_ns)
        w = self.world_ns
        sh(["ip", "-n", w, "addr", "add", f"{WORLD_IP}/32", "dev", "lo"])
        sh(["ip", "netns", "exec", w, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
        for name in ("mac", "mac2", "web", "ssh"):
            ns, k = self.ns(name), LINKS[name]
            self._add_ns(ns)
            sh(["ip", "-n", w, "link", "add", name, "type", "veth", "peer", "name", "eth0", "netns", ns])
            sh(["ip", "-n", w, "addr", "add", f"10.77.{k}.1/24", "dev", name])
            sh(["ip", "-n", w, "link", "set", name, "up"])
            sh(["ip", "-n", ns, "addr", "add", f"10.77.{k}.2/24", "dev", "eth0"])
            sh(["ip", "-n", ns, "link", "set", "eth0", "up"])
            sh(["ip", "-n", ns, "route", "add", "default", "via", f"10.77.{k}.1"])
            self.nodes[name] = Node(name, ns, self.dir / name, self)
        self._start_harness()
        for node in self.nodes.values():
            node.start_tailscaled()

    def _start_harness(self) -> None:
        state_file = self.dir / "controlplane.json"
        log = (self.dir / "controlplane.log").open("ab")
        self.harness = subprocess.Popen(
            ["ip", "netns", "exec", self.world_ns, str(labtools.controlplane()), "-addr", WORLD_IP,
             "-state", str(state_file)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(lambda: state_file.exists() or self.harness.poll() is not None, 60, what="the control plane")
        if self.harness.poll() is not None:
            raise AssertionError(f"controlplane exited: {(self.dir / 'controlplane.log').read_text()[-3000:]}")
        self.state = json.loads(state_file.read_text())

    def join(self) -> None:
        """Log every node in: mac and mac2 on home (interactively), web and ssh on fgpu (auth key)."""
        self.nodes["mac"].login_home()
        self.nodes["mac2"].login_home()
        self.nodes["web"].login_fgpu()
        self.nodes["ssh"].login_fgpu()

    def start_services(self) -> None:
        web = self.nodes["web"]
        (web.dir / "www").mkdir(exist_ok=True)
        (web.dir / "www/index.html").write_text(WEB_PAGE)
        web.spawn("http", f"exec /usr/bin/python3 -m http.server -d {web.dir}/www 3000")
        ssh = self.nodes["ssh"]
        sshd, key = labtools.sshd(), ssh.dir / "client_key"
        sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ssh.dir / "host_key")])
        sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)])
        (ssh.dir / "sshd_config").write_text(
            f"Port 22\nHostKey {ssh.dir}/host_key\nAuthorizedKeysFile {key}.pub\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
            f"PermitRootLogin prohibit-password\nPidFile {ssh.dir}/sshd.pid\nStrictModes no\n")
        # It wants a user "sshd" and the directory /run/sshd for privilege separation: in
        # its mount namespace a passwd file with that user and a /run of its own give them,
        # and the machine gets neither.
        passwd = Path("/etc/passwd").read_text()
        (ssh.dir / "passwd").write_text(passwd + "sshd:x:64999:65534:lab sshd:/run/sshd:/usr/sbin/nologin\n")
        ssh.spawn("sshd", f"mount --bind {ssh.dir}/passwd /etc/passwd && mount -t tmpfs tmpfs /run && "
                          f"mkdir -m 755 /run/sshd && exec {sshd} -D -e -f {ssh.dir}/sshd_config")
        wait_for(lambda: web.exec(["curl", "-fsS", "-m", "2", "http://127.0.0.1:3000/"], check=False).stdout
                 == WEB_PAGE, 20, what="the web peer's server")
        wait_for(lambda: ssh.exec(["nc", "-z", "-w", "2", "127.0.0.1", "22"], check=False).returncode == 0, 20,
                 what="the ssh peer's sshd")

    def plug(self, container_pid: int) -> None:
        """A veth between the world and the gateway container's network namespace: the
        gateway's uplink. Done at every boot (a reboot makes a new namespace)."""
        k = LINKS["gw"]
        sh(["ip", "-n", self.world_ns, "link", "del", "gw"], check=False)
        sh(["ip", "-n", self.world_ns, "link", "add", "gw", "type", "veth", "peer", "name", "uplink0",
            "netns", f"/proc/{container_pid}/ns/net"])
        sh(["ip", "-n", self.world_ns, "addr", "add", f"10.77.{k}.1/24", "dev", "gw"])
        sh(["ip", "-n", self.world_ns, "link", "set", "gw", "up"])
        enter = ["nsenter", "-t", str(container_pid), "-n"]
        sh([*enter, "ip", "addr", "add", f"10.77.{k}.2/24", "dev", "uplink0"])
        sh([*enter, "ip", "link", "set", "uplink0", "up"])
        sh([*enter, "ip", "link", "set", "lo", "up"])
        sh([*enter, "ip", "route", "replace", "default", "via", f"10.77.{k}.1"])

    def close(self) -> None:
        for node in self.nodes.values():
            node.stop()
        if self.harness is not None:
            stop_group(self.harness)
        for ns in reversed(self.namespaces):
            sh(["ip", "netns", "del", ns], check=False)
        self.namespaces.clear()


@contextlib.contextmanager
def running_world(workdir: Path) -> Iterator[World]:
    world = World(workdir)
    try:
        world.start()
        world.join()
        world.start_services()
        yield world
    finally:
        world.close()
