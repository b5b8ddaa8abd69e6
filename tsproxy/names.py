"""The one resolver: what a host name means inside one tailnet, for the proxy and the DNS responder.

Forms, for suffix ``fgpu`` (matching is case-insensitive; one trailing dot is allowed):

- an IP literal (``100.64.0.7``, ``fd7a:115c:a1e0::7``) is itself;
- ``A.B.C.D.fgpu`` is that IPv4 address: exactly four decimal octets 0-255 without leading
  zeros, because ``010`` means 8 to inet_aton and 10 to a person, and a name must not mean
  two addresses;
- ``fd7a-115c-a1e0--7.fgpu`` is that IPv6 address: the address in one label with each ``:``
  written as ``-`` (the sslip.io form; ``--`` is ``::``). A peer whose name reads as such an
  address is shadowed by it, as IP forms never wait for tailscaled;
- ``host.fgpu`` is the node ``host`` of that tailnet, Self included, from tailscaled's status:
  its MagicDNS name (first label of DNSName) wins over its HostName; its TailscaleIPs, IPv4
  first. A name more than one node claims at the same rank is not found rather than guessed;
- ``a.b.fgpu`` (more labels under the suffix) and ``fgpu`` alone are not found;
- any other name is asked of that tailnet's tailscaled (dns-query, A and AAAA), never of the
  host's resolver: MagicDNS names and, when the tailnet's DNS settings are accepted, the rest.

Names are ASCII: a Unicode label is not found (clients send IDNA A-labels; ``xn--...`` labels
are ordinary labels). Labels are 1-63 characters of letters, digits, ``-`` and ``_``, whole
names at most 253; a name whose last label is all digits is not a name (RFC 3696 2), so
``010.1.2.3`` is not found instead of being sent to a resolver.

tailscaled's status is cached for ``status_ttl`` seconds (1.5 by default), failures included,
and concurrent misses share one request: a burst of connections costs one LocalAPI call, a
stopped or wedged daemon costs each caller at most one LocalAPI timeout per TTL, and a peer that
joins is seen within the TTL.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import time
from collections.abc import Callable
from typing import Any

from tsproxy_generator.addresses import Address, is_host_name
from tsproxy_generator.addresses import ip_literal as unscoped_ip_literal

from .localapi import LocalAPI, LocalAPIError

STATUS_TTL = 1.5
OCTET = re.compile(r"0|[1-9][0-9]{0,2}")
HEX_LABEL = re.compile(r"[0-9a-f-]+")
# Peers are usable in these states; NeedsLogin, Stopped, NoState have no network map.
READY_STATES = ("Running", "Starting")


class ResolveError(Exception):
    """A name gave no address; ``str()`` says why, for the log line."""


class NameNotFound(ResolveError):
    """The name has no address in this tailnet (SOCKS REP 4, HTTP 502, DNS NXDOMAIN)."""


class ResolverDown(ResolveError):
    """tailscaled could not be asked or could not answer (SOCKS REP 1, HTTP 502, DNS SERVFAIL)."""


def normalize(host: str) -> str:
    """``host`` lower-cased without its trailing dot, if it is a well-formed name or IP literal."""
    name = host[:-1] if host.endswith(".") else host
    if not name.isascii():
        raise NameNotFound(f"{host!r}: not an ASCII name (use the IDNA xn-- form)")
    name = name.lower()
    if ":" in name:  # only an IPv6 literal has one; validated by the caller
        return name
    if not is_host_name(host):  # (which allows the one trailing dot, not two)
        raise NameNotFound(f"{host[:80]!r}: not a valid name")
    return name


def ip_literal(name: str) -> Address | None:
    if "%" in name:  # after `normalize`, only an IPv6 literal can hold one
        raise NameNotFound(f"{name!r}: scoped addresses are not tailnet addresses")
    return unscoped_ip_literal(name)


def embedded(labels: list[str]) -> Address | None:
    """The address spelled by the labels under the suffix, if they spell one."""
    if len(labels) == 4 and all(OCTET.fullmatch(label) for label in labels):
        if all(int(label) <= 255 for label in labels):
            return ipaddress.IPv4Address(".".join(labels))
        return None
    if len(labels) == 1 and "-" in labels[0] and HEX_LABEL.fullmatch(labels[0]):
        try:
            return ipaddress.IPv6Address(labels[0].replace("-", ":"))
        except ValueError:
            return None
    return None


def ipv4_first(addresses: list[Address]) -> list[Address]:
    return sorted(addresses, key=lambda address: address.version)


class Resolver:
    """Names of one tailnet (see the module docstring), answered through its LocalAPI."""

    def __init__(self, suffix: str, api: LocalAPI, status_ttl: float = STATUS_TTL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.suffix = suffix.lower().strip(".")
        self.api = api
        self.status_ttl = status_ttl
        self._clock = clock
        self._status: dict[str, Any] | LocalAPIError | None = None
        self._status_until = 0.0
        self._inflight: asyncio.Task[dict[str, Any]] | None = None

    def resolve_now(self, host: str) -> list[Address] | None:
        """The answer when it needs no daemon (IP literals, IP-embedded names), None when
        :meth:`resolve` must ask tailscaled; raises NameNotFound for names that never resolve.
        Synchronous, for the DNS responder's hot path."""
        name = normalize(host)
        if ":" in name:
            if (address := ip_literal(name)) is None:
                raise NameNotFound(f"{host!r}: not a valid IPv6 address")
            return [address]
        if (address := ip_literal(name)) is not None:
            return [address]
        labels = self._under_suffix(name)
        if labels is None:
            if name.rsplit(".", 1)[-1].isdigit():
                raise NameNotFound(f"{host!r}: not a valid name or IPv4 address")
            return None
        if (address := embedded(labels)) is not None:
            return [address]
        if len(labels) != 1:
            # A.B.C.D-like shapes that are no address (010.1.2.3, 256.1.1.1, 1.2.3) and
            # deeper names: saying "not found" beats guessing what they meant.
            raise NameNotFound(f"{host!r}: no such name under .{self.suffix}")
        return None

    async def resolve(self, host: str) -> list[Address]:
        """Addresses for ``host``, IPv4 first; NameNotFound or ResolverDown otherwise."""
        if (addresses := self.resolve_now(host)) is not None:
            return addresses
        name = normalize(host)
        labels = self._under_suffix(name)
        if labels is not None:
            return await self._peer(labels[0], host)
        return await self._ask_tailscaled(name)

    def _under_suffix(self, name: str) -> list[str] | None:
        """The labels before ``.SUFFIX``, [] for the suffix itself, None when outside it."""
        if name == self.suffix:
            return []
        if name.endswith("." + self.suffix):
            return name[: -len(self.suffix) - 1].split(".")
        return None

    async def _peer(self, label: str, host: str) -> list[Address]:
        return peer_addresses(await self.status(), label, host)

    def fresh_status(self) -> dict[str, Any] | None:
        """The cached status while it is fresh (a new fetch gives a new object); None when
        tailscaled would have to be asked."""
        if self._clock() >= self._status_until or not isinstance(self._status, dict):
            return None
        return self._status

    def peer_now(self, host: str) -> list[Address] | None:
        """The addresses of the node ``host`` (``label.SUFFIX``) from the cached status while
        it is fresh; None when tailscaled would have to be asked. For the DNS hot path."""
        if (status := self.fresh_status()) is None:
            return None
        labels = self._under_suffix(normalize(host))
        if labels is None or len(labels) != 1:
            return None
        return peer_addresses(status, labels[0], host)

    async def status(self) -> dict[str, Any]:
        """tailscaled's status, at most ``status_ttl`` seconds old; ResolverDown if none."""
        if self._clock() >= self._status_until:
            if self._inflight is None:
                self._inflight = asyncio.ensure_future(self._fetch_status())
                # A fetch whose waiters were all cancelled must not warn "never retrieved".
                self._inflight.add_done_callback(lambda task: task.cancelled() or task.exception())
            try:
                # shield: one caller's timeout must not cancel what the others wait for.
                return await asyncio.shield(self._inflight)
            except LocalAPIError as error:
                raise ResolverDown(str(error)) from None
        if isinstance(self._status, LocalAPIError):
            raise ResolverDown(str(self._status))
        assert self._status is not None
        return self._status

    async def _fetch_status(self) -> dict[str, Any]:
        try:
            status = await self.api.status()
        except LocalAPIError as error:
            self._remember(error)
            raise
        finally:
            self._inflight = None
        self._remember(status)
        return status

    def _remember(self, result: dict[str, Any] | LocalAPIError) -> None:
        self._status = result
        self._status_until = self._clock() + self.status_ttl

    async def _ask_tailscaled(self, name: str) -> list[Address]:
        results = await asyncio.gather(self._query(name, "A"), self._query(name, "AAAA"),
                                       return_exceptions=True)
        addresses: list[Address] = []
        failures: list[ResolveError] = []
        for result in results:
            if isinstance(result, ResolveError):
                failures.append(result)
            elif isinstance(result, BaseException):
                raise result
            else:
                addresses += result
        if addresses:
            return ipv4_first(addresses)
        # Down beats not-found: an AAAA NXDOMAIN says nothing when the A query could not be asked.
        raise next((f for f in failures if isinstance(f, ResolverDown)),
                   failures[0] if failures else NameNotFound(f"{name!r}: no address"))

    async def _query(self, name: str, qtype: str) -> list[Address]:
        try:
            reply = await self.api.dns_query(name, qtype)
        except LocalAPIError as error:
            raise ResolverDown(str(error)) from None
        return answer_addresses(reply, name, qtype)


def peer_addresses(status: dict[str, Any], label: str, host: str) -> list[Address]:
    """The node ``label`` of a status: its MagicDNS name wins over its HostName, and a name
    more than one node claims at the same rank is not found rather than guessed."""
    state = status.get("BackendState")
    if state not in READY_STATES:
        raise ResolverDown(f"{host!r}: tailscaled is {state or 'in no state'}, not running")
    nodes = [status.get("Self"), *(status.get("Peer") or {}).values()]
    magic_suffix = str(status.get("MagicDNSSuffix") or "").lower().strip(".")
    ranks: list[list[list[Address]]] = [[], [], []]
    for node in nodes:
        if not isinstance(node, dict):
            continue
        dns_name = str(node.get("DNSName") or "").lower().strip(".")
        first, _, rest = dns_name.partition(".")
        if first == label:
            ranks[0 if rest == magic_suffix else 1].append(node_addresses(node))
        elif str(node.get("HostName") or "").lower() == label:
            ranks[2].append(node_addresses(node))
    for matches in ranks:
        if len(matches) == 1 and matches[0]:
            return matches[0]
        if matches:
            raise NameNotFound(f"{host!r}: {len(matches)} nodes answer to {label!r}"
                               if len(matches) > 1 else f"{host!r}: node has no address")
    raise NameNotFound(f"{host!r}: no node {label!r} in this tailnet")


def node_addresses(node: dict[str, Any]) -> list[Address]:
    addresses: list[Address] = []
    for text in node.get("TailscaleIPs") or ():
        try:
            addresses.append(ipaddress.ip_address(text))
        except (ValueError, TypeError):
            continue
    return ipv4_first(addresses)


def answer_addresses(reply: bytes, name: str, qtype: str) -> list[Address]:
    """The ``qtype`` addresses a raw DNS reply gives for ``name``, following CNAMEs inside it.
    NXDOMAIN -> NameNotFound; SERVFAIL, REFUSED and unparsable replies -> ResolverDown (the
    tailnet's DNS could not say; with --accept-dns=false tailscaled SERVFAILs every name that
    is not MagicDNS)."""
    import dnslib  # type: ignore[import-untyped]  # lazily: the proxy starts without it

    try:
        record = dnslib.DNSRecord.parse(reply)
    except Exception as error:  # dnslib raises DNSError, and worse on some garbage
        raise ResolverDown(f"{name!r}: tailscaled's DNS reply does not parse: {error}") from None
    rcode = record.header.rcode
    if rcode == dnslib.RCODE.NXDOMAIN:
        raise NameNotFound(f"{name!r}: NXDOMAIN")
    if rcode != dnslib.RCODE.NOERROR:
        raise ResolverDown(f"{name!r}: tailscaled's DNS answered {dnslib.RCODE.get(rcode)}")
    wanted = {name.lower().rstrip(".")}
    addresses: list[Address] = []
    for rr in record.rr:
        owner = str(rr.rname).lower().rstrip(".")
        if owner not in wanted:
            continue
        if rr.rtype == dnslib.QTYPE.CNAME:
            wanted.add(str(rr.rdata).lower().rstrip("."))
        elif rr.rtype == getattr(dnslib.QTYPE, qtype):
            addresses.append(ipaddress.ip_address(str(rr.rdata)))
    return addresses
