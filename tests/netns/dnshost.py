"""`tsproxy dns` in a proxy world's fake host (proxyhost.py), as tests run it: on the "tailnet
address" 100.80.0.1:53, with fake tailscaleds that come and go, and its query counters in
/run/tsproxy-dns/queries.json as under systemd (RuntimeDirectory=)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fakehost import REPO, TIMEOUT
from proxyhost import PROXY_IP, ProxyWorld, proxy_world

from tsproxy_generator.vocabulary import DNS_COUNTS

DNS_IP = PROXY_IP  # the host's own tailnet address, as in a real install
RUN_DIR = "/run/tsproxy-dnstest"  # DIR/NAME/tailscaled.sock, inside the fake host


class Responder:
    """`tsproxy dns --listen 100.80.0.1:53` in the fake host, and its fake tailscaleds."""

    def __init__(self, world: ProxyWorld) -> None:
        self.world = world
        self.log_path = world.workdir / "dns.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.daemons: dict[str, subprocess.Popen[str]] = {}

    def write_conf(self, name: str, text: str) -> None:
        (self.world.fake.conf_dir / f"{name}.conf").write_text(text)

    def start(self) -> None:
        self.log_path.write_bytes(b"")
        # systemd makes the RuntimeDirectory, and tells the service where it is.
        counts_dir = os.path.dirname(DNS_COUNTS)
        self.world.fake.run("mkdir", "-p", counts_dir)
        command = ["nsenter", f"--target={self.world.fake.holder.pid}", "--net", "--mount", "--",
                   "env", f"PYTHONPATH={REPO}", f"TSPROXY_CONF_DIR={self.world.fake.conf_dir}",
                   f"RUNTIME_DIRECTORY={counts_dir}",
                   "PYTHONDONTWRITEBYTECODE=1", "timeout", "300",
                   "prlimit", "--nofile=1024:",  # the soft fd limit systemd leaves services
                   sys.executable, "-m", "tsproxy", "dns", "--listen", f"{DNS_IP}:53",
                   "--run-dir", RUN_DIR, "--timeout", "1"]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=log,
                                            start_new_session=True)
        self.wait_log("serving")

    def stop(self) -> int:
        assert self.process is not None
        os.kill(self.pid(), signal.SIGTERM)
        code = self.process.wait(TIMEOUT)
        self.process = None
        return code

    def pid(self) -> int:
        done = self.world.fake.run("pgrep", "-f", "-n", "tsproxy dns --listen")
        return int(done.stdout.split()[0])

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, count: int = 1) -> None:
        deadline = time.monotonic() + TIMEOUT
        while self.log().count(text) < count:
            assert time.monotonic() < deadline, f"no {text!r} in the log:\n{self.log()}"
            time.sleep(0.05)

    def daemon(self, name: str, table: dict[str, Any] | None) -> None:
        """(Re)start the fake tailscaled of instance `name`; None: stop it."""
        if (old := self.daemons.pop(name, None)) is not None:
            os.killpg(old.pid, signal.SIGKILL)
            old.wait(TIMEOUT)
        path = f"{RUN_DIR}/{name}/tailscaled.sock"
        self.world.fake.run("rm", "-f", path)
        if table is None:
            return
        table_path = self.world.workdir / f"dns-{name}.json"
        table_path.write_text(json.dumps(table))
        process = subprocess.Popen(
            ["nsenter", f"--target={self.world.fake.holder.pid}", "--net", "--mount", "--",
             "sh", "-c", f"mkdir -p {RUN_DIR}/{name}; {sys.executable} "
                         f"{REPO}/tests/fake_localapi.py {path} {table_path} & "
                         f"while [ ! -S {path} ]; do sleep 0.02; done; echo ready; wait"],
            stdout=subprocess.PIPE, text=True, start_new_session=True)
        assert process.stdout is not None and process.stdout.readline() == "ready\n"
        self.daemons[name] = process

    def counted(self, instance: str, qtype: str, rcode: str) -> int:
        """How many such queries the counters file counts (instance "": outside every zone)."""
        done = self.world.fake.run("cat", DNS_COUNTS, check=False)
        counts = json.loads(done.stdout) if done.returncode == 0 else {}
        table = counts.get("queries", {}).get(instance, {}) if instance else \
            counts.get("outside", {})
        return int(table.get(qtype, {}).get(rcode, 0))

    def wait_counted(self, instance: str, qtype: str, rcode: str, count: int) -> None:
        """Until the counters file (written every 2 s) counts `count` such queries."""
        deadline = time.monotonic() + TIMEOUT
        while (now := self.counted(instance, qtype, rcode)) != count:
            assert time.monotonic() < deadline, f"{instance} {qtype} {rcode}: {now}, not {count}"
            time.sleep(0.1)

    def close(self) -> None:
        if self.process is not None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(TIMEOUT)
        for name in list(self.daemons):
            self.daemon(name, None)


@contextmanager
def running(workdir: Path, prepare: Callable[[Responder], None]) -> Iterator[Responder]:
    """A proxy world with a responder in it: `prepare` writes its confs and starts fake
    tailscaleds (or a proxy) first; all of it goes at the end."""
    with proxy_world(workdir) as world:
        dns = Responder(world)
        try:
            prepare(dns)
            dns.start()
            yield dns
        finally:
            dns.close()


def dig(dns: Responder, *args: str, tool: str = "dig") -> str:
    once = ("+time=3", "+tries=1") if tool == "dig" else ("+timeout=3", "+retry=0")
    done = dns.world.client(tool, f"@{DNS_IP}", *once, *args, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout
