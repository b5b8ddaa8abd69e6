"""Who may use the proxy: client networks, the users file, Tailscale identities.

All three come from the conf (allow_clients, users_file, allow_identities). A client must
pass every one that is set; each refusal is answered as "not allowed" (SOCKS REP 2, HTTP 403)
except a failed login, which the handshake answers itself (RFC 1929 01 01, HTTP 407).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import os
import stat
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from tsproxy_generator.addresses import Network, unmapped

from ..errors import TsproxyError
from ..localapi import LocalAPI, LocalAPIError

IDENTITY_TTL = 30.0  # how long a WhoIs answer is reused for further connections
UNKNOWN_TTL = 5.0  # ... an "unknown" or failed one: a node that just joined is let in soon
CACHE_MAX = 4096  # addresses remembered by each cache before it starts over


class ClientNetworks:
    """allow_clients: the source address must be inside one of these networks."""

    def __init__(self, networks: Iterable[Network]) -> None:
        self.networks = tuple(networks)
        self._seen: dict[str, bool] = {}

    def allows(self, host: str) -> bool:
        # Clients come back again and again: parsing the address once each is enough.
        verdict = self._seen.get(host)
        if verdict is None:
            verdict = self._judge(host)
            if len(self._seen) >= CACHE_MAX:
                self._seen.clear()
            self._seen[host] = verdict
        return verdict

    def _judge(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host.partition("%")[0])
        except ValueError:
            return False
        address = unmapped(address)  # a v4 client on a dual-stack listener
        return any(address in network for network in self.networks)


class Users:
    """users_file: `user:password` lines (the password is the rest of the line, verbatim),
    blank lines and # comments; compared in constant time."""

    def __init__(self, passwords: dict[str, bytes]) -> None:
        self._passwords = passwords

    @classmethod
    def load(cls, path: str) -> Users:
        try:
            with open(path, "rb") as file:
                mode = os.fstat(file.fileno()).st_mode
                data = file.read()
        except OSError as error:
            raise TsproxyError(f"{path}: {error.strerror}") from None
        if stat.S_IMODE(mode) & 0o077:
            raise TsproxyError(f"{path}: readable by group or others (mode "
                               f"{stat.S_IMODE(mode):o}): chmod 600 it")
        passwords: dict[str, bytes] = {}
        for number, raw in enumerate(data.splitlines(), 1):
            try:
                line = raw.decode()
            except UnicodeDecodeError:
                raise TsproxyError(f"{path}: line {number}: not UTF-8") from None
            # The password is everything after the first colon, spaces included.
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            user, colon, password = line.partition(":")
            if not colon or not user:
                raise TsproxyError(f"{path}: line {number}: not user:password")
            passwords[user] = password.encode()
        return cls(passwords)

    def __len__(self) -> int:
        return len(self._passwords)

    def authenticate(self, user: str, password: str) -> bool:
        # An unknown user costs the same comparison as a known one: timing tells nothing.
        stored = self._passwords.get(user)
        given = password.encode()
        if stored is None:
            hmac.compare_digest(given, given)
            return False
        return hmac.compare_digest(stored, given)


@dataclass(frozen=True)
class Identity:
    allowed: bool
    name: str | None  # login name or tags, for the log; None when unknown
    reason: str  # why not, when not allowed


class Identities:
    """allow_identities: the client's Tailscale login name or one of its node's tags must be
    listed. Looked up with WhoIs on the host's own tailscaled; unknown means refused."""

    def __init__(self, allowed: Iterable[str], api: LocalAPI,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.allowed = frozenset(allowed)
        self.api = api
        self._clock = clock
        self._cache: dict[str, tuple[float, Identity]] = {}
        self._inflight: dict[str, asyncio.Task[Identity]] = {}

    async def check(self, host: str) -> Identity:
        now = self._clock()
        cached = self._cache.get(host)
        if cached is not None and cached[0] > now:
            return cached[1]
        # A burst of connections from one client shares one WhoIs.
        task = self._inflight.get(host)
        if task is None:
            task = self._inflight[host] = asyncio.ensure_future(self._lookup(host))
        # shield: one caller's timeout must not cancel what the others wait for.
        return await asyncio.shield(task)

    async def _lookup(self, host: str) -> Identity:
        try:
            try:
                answer = await self.api.whois(host)
            except LocalAPIError as error:
                identity = Identity(False, None, f"identity unknown: {error}")
            else:
                try:
                    identity = self._judge(answer)
                except (AttributeError, TypeError, ValueError):  # not what tailscaled sends
                    identity = Identity(False, None, "identity unknown: odd WhoIs answer")
            ttl = IDENTITY_TTL if identity.name is not None else UNKNOWN_TTL
            if len(self._cache) >= CACHE_MAX:
                self._cache.clear()
            self._cache[host] = (self._clock() + ttl, identity)
            return identity
        finally:
            del self._inflight[host]

    def _judge(self, answer: dict[str, Any] | None) -> Identity:
        if answer is None:
            return Identity(False, None, "not a node of the host's tailnet")
        node = answer.get("Node") or {}
        tags = [str(tag) for tag in node.get("Tags") or ()]
        login = str((answer.get("UserProfile") or {}).get("LoginName") or "")
        # A tagged node belongs to its tags, not to the user who created it.
        names = tags if tags else ([login] if login else [])
        shown = ",".join(names) or "(no login name)"
        if any(name in self.allowed for name in names):
            return Identity(True, shown, "")
        return Identity(False, shown, f"identity {shown} is not in allow_identities")


def client_host(host: str) -> str:
    """The client's address as one form per client: a v4 client on a dual-stack listener
    shows up as ::ffff:A.B.C.D."""
    return host[7:] if host.startswith("::ffff:") and "." in host else host
