"""What only `tsproxy doctor` asks of an instance, beyond what status gathers: its veth's
addresses and route, its resolv.conf, whether anything listens on the proxy's address, and
whether its DNS responder answers. The judgement itself is health.py's, as status's is.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from collections.abc import Callable

import dnslib  # type: ignore[import-untyped]

from tsproxy_generator.model import TailnetConf
from tsproxy_generator.vocabulary import netns_etc

from . import health, holders
from .health import Finding
from .netns import NS_IFNAME

DNS_TIMEOUT = 2.0
COMMAND_TIMEOUT = 10


class Deep:
    """health.Probes, asked of the system as it is now."""

    def addresses(self, conf: TailnetConf) -> str | None:
        return network_problem(conf)

    def resolv_conf(self, conf: TailnetConf) -> str | None:
        path = os.path.join(netns_etc(conf.name), "resolv.conf")
        return None if os.path.exists(path) else f"{path} is missing"

    def listening(self, conf: TailnetConf) -> str | None:
        return None if holders.holders(conf.listen) else f"nothing listens on {conf.listen}"

    def dns(self, conf: TailnetConf) -> str | None:
        return dns_problem(conf)


def conf_findings(name: str, error: str | None, generated: str) -> list[Finding]:
    """The conf and what the generator made of it (`tsproxy list`'s GENERATED)."""
    if error:
        return [health.conf_finding(name, error)]
    found = [health.conf_finding(name, None)]
    if generated == "yes":
        found.append(Finding(name, "generator output present and current", None))
    else:
        what = "missing" if generated == "no" else "older than the conf"
        found.append(Finding(name, "generator output present and current",
                             f"generated units are {what}", "systemctl daemon-reload", True))
    return found


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
