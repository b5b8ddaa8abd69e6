"""`tsproxy doctor`'s checks: every piece an instance needs, each failure with the one
command that fixes it, and whether that command is safe to run unasked (`--fix`).

Safe means it restarts or reloads units and rebuilds what `up` makes; it never deletes
state (tailscaled's node key, the confs) and never logs anyone in or out.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

import dnslib  # type: ignore[import-untyped]

from tsproxy_generator.model import TailnetConf
from tsproxy_generator.vocabulary import (
    DNS_SERVICE,
    DNS_SOCKET,
    INSTANCE,
    PROXY,
    TAILSCALED,
    WATCH,
    netns_etc,
    nft_table,
    unit,
)

from . import forwarding, holders
from .netns import HOST_RESOLV_CONF, NS_IFNAME, tailscaled_path
from .status import Status

DNS_TIMEOUT = 2.0
COMMAND_TIMEOUT = 10


@dataclass(frozen=True)
class Finding:
    name: str  # instance, or "host"
    check: str  # what was checked, in a few words
    problem: str | None  # None: fine
    fix: str | None = None  # the one command that fixes it
    safe: bool = False  # --fix may run it

    @property
    def ok(self) -> bool:
        return self.problem is None


def conf_findings(name: str, error: str | None, generated: str) -> list[Finding]:
    """The conf and what the generator made of it (`tsproxy list`'s GENERATED)."""
    if error:
        return [Finding(name, "conf valid", error, "edit the conf, then: tsproxy check")]
    found = [Finding(name, "conf valid", None)]
    if generated == "yes":
        found.append(Finding(name, "generator output present and current", None))
    else:
        what = "missing" if generated == "no" else "older than the conf"
        found.append(Finding(name, "generator output present and current",
                             f"generated units are {what}", "systemctl daemon-reload", True))
    return found


def instance_findings(conf: TailnetConf, status: Status) -> list[Finding]:
    """Everything of a running (or meant-to-run) instance, in the order it is built."""
    name, ns = conf.name, conf.netns
    restart = f"systemctl restart {unit(INSTANCE, name, '')}"
    found = []

    def check(what: str, problem: str | None, fix: str = restart, safe: bool = True) -> None:
        found.append(Finding(name, what, problem, None if problem is None else fix,
                             safe and problem is not None))

    instance = status.units.get("instance")
    if instance != "active":
        # Nothing else is there to check. Stopped: maybe on purpose, so --fix leaves it.
        check("instance started", f"{unit(INSTANCE, name, '')} is {instance}",
              f"systemctl start {unit(INSTANCE, name, '')}" if instance == "inactive" else restart,
              safe=instance != "inactive")
        return found
    check("instance started", None)
    check("netns present", None if status.netns else f"network namespace {ns} is missing")
    check("veth, addresses and route", network_problem(conf))
    check("nft table whole", None if status.nft_table else
          f"nft table inet {nft_table(name)} is missing or flushed")
    if status.forwarding_guard is not None:
        check("forwarding guard whole", None if status.forwarding_guard else
              f"nft table {forwarding.GUARD_TABLE} is missing or flushed: the host forwards "
              "for everyone")
    check("namespace resolv.conf", None if os.path.exists(
        resolv_conf := os.path.join(netns_etc(name), "resolv.conf")) else f"{resolv_conf} "
          "is missing")
    tailscaled = status.units.get("tailscaled")
    check("tailscaled running", None if tailscaled == "active" else
          f"{unit(TAILSCALED, name, '')} is {tailscaled}")
    if tailscaled == "active":
        state = status.backend_state
        check("tailscaled logged in", None if state == "Running" else
              f"tailscaled is {state or 'not answering: ' + (status.health or ['?'])[0]}",
              f"tsproxy login {name}" if state == "NeedsLogin" else restart,
              safe=state not in ("NeedsLogin", "Running"))
    socket_restart = f"systemctl restart {unit(PROXY, name, '.socket')}"
    if status.units.get("proxy_socket") != "active" and (held := holders.held(conf.listen)):
        check("proxy socket bound", str(held), blocked_fix(held, socket_restart, name), safe=False)
    else:
        check("proxy socket bound", socket_problem(status, str(conf.listen)), socket_restart)
    check("watchdog running", None if status.units.get("watch") == "active" else
          f"{unit(WATCH, name, '')} is {status.units.get('watch')}")
    if conf.dns_listen is not None:
        dns_restart = f"systemctl restart {DNS_SOCKET} {DNS_SERVICE}"
        if status.units.get("dns_socket") != "active" and \
                (held := holders.held(conf.dns_listen, ("udp", "tcp"))):
            check("DNS answers an IP-embedded name", str(held),
                  blocked_fix(held, dns_restart, name), safe=False)
        else:
            check("DNS answers an IP-embedded name", dns_problem(conf), dns_restart)
    return found


def blocked_fix(held: holders.Held, restart: str, name: str) -> str:
    """A port someone else holds: a restart can only work once that one is stopped."""
    return f"{held.stop}, then {restart} (see tsproxy migrate {name})"


def host_findings() -> list[Finding]:
    installed = os.access(tailscaled_path(), os.X_OK)
    found = [Finding("host", "tailscaled installed", None) if installed else
             Finding("host", "tailscaled installed", f"{tailscaled_path()} not found",
                     "apt install tailscale")]
    return found + _resolv_conf_findings()


def _resolv_conf_findings() -> list[Finding]:
    """tsproxy never touches the host's resolv.conf; a copy of a namespace's in its place
    would send the host's own lookups to the uplink's resolvers only."""
    try:
        with open(HOST_RESOLV_CONF, encoding="utf-8", errors="replace") as file:
            text = file.read()
    except OSError as error:
        return [Finding("host", "resolv.conf untouched", f"{HOST_RESOLV_CONF}: {error.strerror}",
                        f"restore {HOST_RESOLV_CONF}")]
    if "# Generated by tsproxy" in text:
        return [Finding("host", "resolv.conf untouched", f"{HOST_RESOLV_CONF} is a copy of a "
                        "namespace's resolv.conf", f"restore {HOST_RESOLV_CONF} (the host's own "
                        "resolver setup)")]
    return [Finding("host", "resolv.conf untouched", None)]


def network_problem(conf: TailnetConf,
                    ip: Callable[[list[str]], list[dict[str, object]]] | None = None) -> str | None:
    """The veth pair, its two addresses and the namespace's default route, as `up` sets them."""
    ip = ip or _ip_json
    ns = conf.netns
    try:
        host = ip(["addr", "show", "dev", ns])
        inside = ip(["-n", ns, "addr", "show", "dev", NS_IFNAME])
        routes = ip(["-n", ns, "route", "show", "default"])
    except (OSError, ValueError, subprocess.SubprocessError) as error:
        return f"cannot read {ns}: {error}"
    if not host:
        return f"veth {ns} is missing"
    if not _has_address(host, conf.veth_host):
        return f"veth {ns} lacks {conf.veth_host}"
    if not _has_address(inside, conf.veth_ns):
        return f"{NS_IFNAME} in {ns} lacks {conf.veth_ns}"
    if not any(route.get("gateway") == str(conf.veth_host.ip) for route in routes):
        return f"{ns} has no default route via {conf.veth_host.ip}"
    return None


def _ip_json(args: list[str]) -> list[dict[str, object]]:
    done = subprocess.run(["ip", "-j", *args], capture_output=True, text=True,
                          timeout=COMMAND_TIMEOUT)
    if done.returncode != 0:
        # A missing device or namespace is an answer: nothing there.
        return []
    value = json.loads(done.stdout or "[]")
    return value if isinstance(value, list) else []


def _has_address(links: list[dict[str, object]], wanted: ipaddress.IPv4Interface) -> bool:
    for link in links:
        for info in link.get("addr_info") or []:  # type: ignore[attr-defined]
            if f"{info.get('local')}/{info.get('prefixlen')}" == str(wanted):
                return True
    return False


def socket_problem(status: Status, listen: str) -> str | None:
    state = status.units.get("proxy_socket")
    if state != "active":
        return f"{unit(PROXY, status.name, '.socket')} is {state}"
    host, _, port = listen.rpartition(":")
    done = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True,
                          timeout=COMMAND_TIMEOUT)
    bound = [line.split()[3] for line in done.stdout.splitlines() if len(line.split()) > 3]
    if listen not in bound and f"{host.strip('[]')}:{port}" not in bound:
        return f"nothing listens on {listen}"
    return None


def dns_problem(conf: TailnetConf) -> str | None:
    """Ask the responder for an IP-embedded name, as a client would, over UDP."""
    assert conf.dns_listen is not None
    address, port = str(conf.dns_listen.address), conf.dns_listen.port
    if address in ("0.0.0.0", "::"):
        address = "127.0.0.1" if address == "0.0.0.0" else "::1"
    name = f"192.0.2.1.{conf.suffix}"
    try:
        answer = query_a(address, port, name)
    except OSError as error:
        return f"no answer for {name} from {conf.dns_listen}: {error.strerror or error}"
    if answer != "192.0.2.1":
        return f"{name} from {conf.dns_listen}: {answer}"
    return None


def query_a(server: str, port: int, name: str, timeout: float = DNS_TIMEOUT) -> str:
    """The first A record's address, or "rcode N" / "no address"; OSError on no answer."""
    question = dnslib.DNSRecord.question(name, "A")
    try:
        reply = dnslib.DNSRecord.parse(question.send(server, port, timeout=timeout))
    except dnslib.DNSError as error:
        return f"bad answer: {error}"
    if reply.header.rcode:
        return f"rcode {dnslib.RCODE.get(reply.header.rcode)}"
    addresses = [str(rr.rdata) for rr in reply.rr if rr.rtype == dnslib.QTYPE.A]
    return addresses[0] if addresses else "no address"
