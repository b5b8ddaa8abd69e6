"""Async client for one tailscaled's LocalAPI: HTTP/1.1 over its unix socket.

Standard library only, one short-lived connection per request (``Connection: close``), so the
proxy and the DNS responder need no HTTP library and keep no state that a restarted tailscaled
could leave stale.

What tailscaled expects (tailscale.com v1.102, ipn/localapi/localapi.go and client/local):

- the Host header is ``local-tailscaled.sock`` (or empty); any other Host, and any Referer or
  Origin header, gets 403 "invalid localapi request" (a guard against browsers);
- no token on Linux: permissions come from the peer credentials of the socket (SO_PEERCRED).
  Every local user may read (status, whois); root or the operator user may also write, and
  dns-query needs write "for privacy reasons", so only root (or the operator) can use it;
- ``GET /localapi/v0/status`` -> ipnstate.Status as JSON;
  ``GET /localapi/v0/whois?addr=IP`` or ``IP:PORT`` -> apitype.WhoIsResponse as JSON,
  404 "no match for IP:port" when the address belongs to no node, 400 when it does not parse;
  ``GET /localapi/v0/dns-query?name=N&type=T`` -> apitype.DNSQueryResponse as JSON:
  ``{"Bytes": <the raw DNS reply, base64 as Go encodes []byte>, "Resolvers": [...]}``; the
  query goes through tailscaled's internal (100.100.100.100) resolver; 500 when that fails.
- Errors are ``http.Error`` bodies: one line of text. Big bodies come chunked.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
from typing import Any
from urllib.parse import quote

HOST = "local-tailscaled.sock"
PREFIX = "/localapi/v0/"
CONNECT_TIMEOUT = 2.0
TIMEOUT = 5.0
# A status with thousands of peers is a few MiB; anything far beyond is not tailscaled.
MAX_BODY = 64 * 1024 * 1024
MAX_LINE = 64 * 1024


def peer_counts(status: dict[str, Any]) -> tuple[int, int]:
    """(peers in the netmap, of those online) from a status answer."""
    peers = list((status.get("Peer") or {}).values())
    return len(peers), sum(1 for peer in peers if peer.get("Online"))


def key_expiry(status: dict[str, Any]) -> str | None:
    """When this node's key expires (RFC 3339, as tailscaled writes it); None: never."""
    expiry = (status.get("Self") or {}).get("KeyExpiry")
    return str(expiry) if expiry else None


class LocalAPIError(Exception):
    """tailscaled did not answer usefully: no socket, refused, too slow, or an error status."""

    def __init__(self, socket_path: str, message: str, status: int | None = None) -> None:
        super().__init__(f"{socket_path}: {message}")
        self.socket_path = socket_path
        self.status = status


class LocalAPI:
    """The LocalAPI of the tailscaled listening on ``socket_path``.

    ``connect_timeout`` bounds reaching the socket, ``timeout`` the whole request (connect
    included): a wedged daemon costs a caller at most ``timeout`` seconds, a stopped one
    (socket missing or refused) fails at once.
    """

    def __init__(self, socket_path: str, connect_timeout: float = CONNECT_TIMEOUT,
                 timeout: float = TIMEOUT) -> None:
        self.socket_path = socket_path
        self.connect_timeout = connect_timeout
        self.timeout = timeout

    async def status(self) -> dict[str, Any]:
        """The daemon's status with peers (BackendState, Self, Peer, MagicDNSSuffix, ...)."""
        return self._json(await self._get_ok("status"))

    async def whois(self, addr: str) -> dict[str, Any] | None:
        """Who owns ``addr`` (``IP`` or ``IP:PORT``): WhoIsResponse (Node, UserProfile,
        CapMap), or None when the address is no node of this tailnet."""
        status, body = await self.get(f"whois?addr={quote(addr, safe='')}")
        if status == 404:
            return None
        self._check(status, body)
        return self._json(body)

    async def dns_query(self, name: str, qtype: str) -> bytes:
        """The raw DNS reply tailscaled's resolver gives for ``name`` and ``qtype`` ("A")."""
        path = f"dns-query?name={quote(name, safe='')}&type={quote(qtype, safe='')}"
        answer = self._json(await self._get_ok(path)).get("Bytes")
        if answer is None:
            return b""
        if not isinstance(answer, str):
            raise LocalAPIError(self.socket_path, "dns-query: Bytes is not a string")
        try:
            return base64.b64decode(answer, validate=True)
        except binascii.Error:
            raise LocalAPIError(self.socket_path, "dns-query: Bytes is not base64") from None

    async def get(self, endpoint: str) -> tuple[int, bytes]:
        """``GET /localapi/v0/ENDPOINT`` (with its query string): HTTP status and body."""
        try:
            async with asyncio.timeout(self.timeout):
                return await self._request(f"{PREFIX}{endpoint}")
        except TimeoutError:
            raise LocalAPIError(self.socket_path,
                                f"no answer within {self.timeout:g} s") from None
        except FileNotFoundError:
            raise LocalAPIError(self.socket_path, "tailscaled is not running (no socket)") from None
        except ConnectionRefusedError:
            raise LocalAPIError(self.socket_path,
                                "tailscaled is not running (connection refused)") from None
        except (OSError, EOFError, ValueError, asyncio.LimitOverrunError) as error:
            # EOFError covers asyncio.IncompleteReadError: the daemon hung up mid-answer.
            raise LocalAPIError(self.socket_path, f"{type(error).__name__}: {error}") from None

    async def _get_ok(self, endpoint: str) -> bytes:
        status, body = await self.get(endpoint)
        self._check(status, body)
        return body

    def _check(self, status: int, body: bytes) -> None:
        if not 200 <= status < 300:
            text = body.decode("utf-8", "replace").strip().splitlines()
            raise LocalAPIError(self.socket_path,
                                f"HTTP {status}: {text[0][:200] if text else '(no text)'}", status)

    def _json(self, body: bytes) -> dict[str, Any]:
        try:
            value = json.loads(body)
        except ValueError:
            value = None
        if not isinstance(value, dict):
            raise LocalAPIError(self.socket_path, "the answer is not a JSON object")
        return value

    async def _request(self, target: str) -> tuple[int, bytes]:
        async with asyncio.timeout(self.connect_timeout):
            reader, writer = await asyncio.open_unix_connection(self.socket_path, limit=MAX_LINE)
        try:
            writer.write(f"GET {target} HTTP/1.1\r\nHost: {HOST}\r\n"
                         "Accept: application/json\r\nConnection: close\r\n\r\n".encode("ascii"))
            await writer.drain()
            return await read_response(reader)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Status and body of one HTTP/1.x response: Content-Length, chunked, or up to EOF.
    Raises ValueError on anything malformed or too big."""
    status_line = await reader.readuntil(b"\r\n")
    parts = status_line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise ValueError(f"bad status line {status_line[:80]!r}")
    status = int(parts[1])
    headers = await read_headers(reader)
    if status in (204, 304) or 100 <= status < 200:
        return status, b""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return status, await read_chunked(reader)
    if "content-length" in headers:
        length = headers["content-length"]
        if not length.isdigit() or int(length) > MAX_BODY:
            raise ValueError(f"bad Content-Length {length[:40]!r}")
        return status, await reader.readexactly(int(length))
    body = await reader.read(MAX_BODY + 1)
    while chunk := await reader.read(MAX_BODY + 1 - len(body)):
        body += chunk
    if len(body) > MAX_BODY:
        raise ValueError("body too big")
    return status, body


async def read_headers(reader: asyncio.StreamReader) -> dict[str, str]:
    headers: dict[str, str] = {}
    total = 0
    while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
        total += len(line)
        name, colon, value = line.decode("latin-1").partition(":")
        if not colon or total > MAX_LINE:
            raise ValueError(f"bad header {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    return headers


async def read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size_line = (await reader.readuntil(b"\r\n")).split(b";", 1)[0].strip()
        # int(x, 16) alone would also take "0x1f", "+1f" and "1_f".
        if not size_line or size_line.strip(b"0123456789abcdefABCDEF"):
            raise ValueError(f"bad chunk size {size_line[:40]!r}")
        size = int(size_line, 16)
        if len(body) + size > MAX_BODY:
            raise ValueError("body too big")
        if size == 0:
            await read_headers(reader)  # trailers: nothing tailscaled sends that we need
            return bytes(body)
        body += await reader.readexactly(size)
        if await reader.readexactly(2) != b"\r\n":
            raise ValueError("chunk not followed by CRLF")
