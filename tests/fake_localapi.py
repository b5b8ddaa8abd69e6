"""A fake tailscaled LocalAPI on a unix socket, serving canned status, whois and dns-query.

For tests of every tier that need a tailscaled without running one (names, identity ACLs).
It answers like tailscale.com v1.102's ipn/localapi: JSON bodies, 404 "no match for IP:port"
for an unknown whois address, 403 for a wrong Host header or a Referer/Origin, dns-query as
``{"Bytes": base64 of the DNS reply, "Resolvers": []}``. A thread serves it, so synchronous
tests, asyncio tests and other processes (through the socket path) can all use it:

    with FakeLocalAPI(tmp_path / "ts.sock",
                      status=make_status("gw", ["100.64.0.1"], peers={"gpu": ["100.64.0.7"]}),
                      whois={"100.64.0.9": make_whois("alice@example.com")},
                      dns={"example.com": ["192.0.2.1", "2001:db8::1"], "bad.test": "SERVFAIL"}):
        ...

A dns item "txt:TEXT" is a TXT record instead of an address.

Switches: ``slow = True`` accepts and reads requests but never answers (until stop);
``chunked = True`` sends bodies chunked instead of with Content-Length; ``errors`` maps an
endpoint ("status", "whois", "dns-query") to an HTTP status to answer instead; a server that
is not started has no socket (daemon down); ``stop(unlink=False)`` leaves the socket file
behind, so connecting is refused (daemon crashed). ``requests`` records what was asked.

Run standalone for another process: ``python3 tests/fake_localapi.py SOCKET TABLE.json``
(TABLE holds "status", "whois" and "dns" as above, and "slow"); it serves until SIGTERM or
SIGINT.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import signal
import socketserver
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

HOST = "local-tailscaled.sock"
MAGIC_SUFFIX = "tail0000.ts.net"
REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 500: "Internal Server Error"}


def make_node(name: str, ips: Sequence[str], hostname: str | None = None,
              magic_suffix: str = MAGIC_SUFFIX, tags: Sequence[str] = ()) -> dict[str, Any]:
    """One ipnstate.PeerStatus: MagicDNS name ``name``, HostName ``hostname`` (default name)."""
    node: dict[str, Any] = {"ID": f"n{name}", "HostName": hostname or name,
                            "DNSName": f"{name}.{magic_suffix}.", "OS": "linux",
                            "TailscaleIPs": list(ips), "Online": True}
    if tags:
        node["Tags"] = list(tags)
    return node


def make_status(self_name: str, self_ips: Sequence[str],
                peers: Mapping[str, Sequence[str]] | Sequence[dict[str, Any]] = (),
                state: str = "Running", magic_suffix: str = MAGIC_SUFFIX) -> dict[str, Any]:
    """An ipnstate.Status; ``peers`` maps MagicDNS names to IPs, or lists make_node() dicts."""
    nodes = ([make_node(n, ips, magic_suffix=magic_suffix) for n, ips in peers.items()]
             if isinstance(peers, Mapping) else list(peers))
    return {"Version": "1.102.5-fake", "BackendState": state, "TUN": True,
            "TailscaleIPs": list(self_ips), "MagicDNSSuffix": magic_suffix,
            "Self": make_node(self_name, self_ips, magic_suffix=magic_suffix),
            "Peer": {f"nodekey:{i:064x}": node for i, node in enumerate(nodes, 1)} or None}


def make_whois(login_name: str, node_name: str = "peer", ips: Sequence[str] = (),
               tags: Sequence[str] = ()) -> dict[str, Any]:
    """An apitype.WhoIsResponse; tagged nodes belong to the "tagged-devices" user as in
    Tailscale, so ACL code must look at Node.Tags, not the login name, for them."""
    node: dict[str, Any] = {"ID": 1, "StableID": f"n{node_name}", "Name": f"{node_name}.{MAGIC_SUFFIX}.",
                            "Addresses": [f"{ip}/{32 if '.' in ip else 128}" for ip in ips]}
    if tags:
        node["Tags"] = list(tags)
        login_name = "tagged-devices"
    return {"Node": node, "UserProfile": {"ID": 1, "LoginName": login_name,
                                          "DisplayName": login_name.split("@")[0]},
            "CapMap": None}


@dataclass
class Request:
    target: str
    headers: dict[str, str]

    @property
    def endpoint(self) -> str:
        return urlsplit(self.target).path.removeprefix("/localapi/v0/")


class FakeLocalAPI:
    def __init__(self, socket_path: str | os.PathLike[str],
                 status: dict[str, Any] | None = None,
                 whois: Mapping[str, dict[str, Any]] | None = None,
                 dns: Mapping[str, Sequence[str] | str] | None = None,
                 *, chunked: bool = False, slow: bool = False,
                 errors: Mapping[str, int] | None = None,
                 usermetrics: str | None = None) -> None:
        self.socket_path = str(socket_path)
        self.status = status if status is not None else make_status("self", ["100.64.0.1"])
        self.whois = dict(whois or {})
        self.dns = {k.lower().rstrip("."): v for k, v in (dns or {}).items()}
        self.chunked = chunked
        self.slow = slow
        self.errors = dict(errors or {})
        self.usermetrics = usermetrics  # None: an older tailscaled, without the endpoint
        self.requests: list[Request] = []
        self._stopping = threading.Event()
        self._server: socketserver.ThreadingUnixStreamServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> FakeLocalAPI:
        self._stopping.clear()
        server = socketserver.ThreadingUnixStreamServer(self.socket_path, _Handler)
        server.daemon_threads = True
        server.block_on_close = False
        server.fake = self  # type: ignore[attr-defined]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="fake-localapi",
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self, unlink: bool = True) -> None:
        self._stopping.set()  # releases slow handlers
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if unlink and os.path.exists(self.socket_path):
            os.unlink(self.socket_path)

    def __enter__(self) -> FakeLocalAPI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def count(self, endpoint: str) -> int:
        return sum(1 for r in self.requests if r.endpoint == endpoint)

    def answer(self, request: Request) -> tuple[int, bytes]:
        """Status and body for one request, as tailscaled would give them."""
        if request.headers.get("host", "") not in ("", HOST) or (
                "referer" in request.headers or "origin" in request.headers):
            return 403, b"invalid localapi request\n"
        url = urlsplit(request.target)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        endpoint = request.endpoint
        if endpoint in self.errors:
            return self.errors[endpoint], f"{endpoint} failed (fake)\n".encode()
        if endpoint == "status":
            return 200, json.dumps(self.status, indent="\t").encode() + b"\n"
        if endpoint == "whois":
            return self._whois(query.get("addr", ""))
        if endpoint == "dns-query":
            return self._dns(query.get("name", ""), query.get("type", "A"))
        if endpoint == "usermetrics" and self.usermetrics is not None:
            return 200, self.usermetrics.encode()
        return 404, b"404 page not found\n"

    def _whois(self, addr: str) -> tuple[int, bytes]:
        if not addr:
            return 400, b"missing 'addr' parameter\n"
        ip = _whois_ip(addr)
        if ip is None:
            return 400, b"invalid 'addr' parameter\n"
        for key in (addr, ip):
            if key in self.whois:
                return 200, json.dumps(self.whois[key], indent="\t").encode()
        return 404, b"no match for IP:port\n"

    def _dns(self, name: str, qtype: str) -> tuple[int, bytes]:
        import dnslib  # type: ignore[import-untyped]  # only dns-query needs it

        if qtype.upper() not in ("A", "AAAA", "CNAME", "MX", "TXT", "NS", "SRV", "PTR", "ALL"):
            return 400, f"unsupported DNS type {qtype!r}\n".encode()
        qt = getattr(dnslib.QTYPE, "ANY" if qtype.upper() == "ALL" else qtype.upper())
        reply = dnslib.DNSRecord(dnslib.DNSHeader(id=1, qr=1, rd=1, ra=1),
                                 q=dnslib.DNSQuestion(name.rstrip(".") + ".", qt))
        entry = self.dns.get(name.lower().rstrip("."))
        if entry is None:
            reply.header.rcode = dnslib.RCODE.NXDOMAIN
        elif isinstance(entry, str):
            reply.header.rcode = getattr(dnslib.RCODE, entry)
        else:
            for text in entry:
                if text.startswith("txt:"):
                    rdata, rtype = dnslib.TXT(text[4:]), dnslib.QTYPE.TXT
                else:
                    rdata = dnslib.A(text) if "." in text else dnslib.AAAA(text)
                    rtype = dnslib.QTYPE.A if "." in text else dnslib.QTYPE.AAAA
                if qt == rtype:
                    reply.add_answer(dnslib.RR(name.rstrip(".") + ".", rtype, rdata=rdata,
                                               ttl=600))
        body = {"Bytes": base64.b64encode(reply.pack()).decode(), "Resolvers": []}
        return 200, json.dumps(body).encode() + b"\n"


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _whois_ip(addr: str) -> str | None:
    """The IP of ``IP``, ``IPv4:PORT`` or ``[IPv6]:PORT`` (Go's netip forms), else None."""
    if _is_ip(addr):
        return addr
    host, colon, port = addr.rpartition(":")
    if not colon or not port.isdigit() or int(port) > 65535:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        return host if ":" in host and _is_ip(host) else None
    return host if "." in host and _is_ip(host) else None


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        fake: FakeLocalAPI = self.server.fake  # type: ignore[attr-defined]
        request_line = self.rfile.readline(65536).decode("latin-1")
        headers: dict[str, str] = {}
        while (line := self.rfile.readline(65536)) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        parts = request_line.split()
        if len(parts) != 3:
            return
        request = Request(parts[1], headers)
        fake.requests.append(request)
        if fake.slow:
            fake._stopping.wait()
            return
        status, body = (405, b"only GET allowed\n") if parts[0] != "GET" else fake.answer(request)
        kind = "application/json" if body.startswith(b"{") else "text/plain; charset=utf-8"
        head = f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}\r\nContent-Type: {kind}\r\n"
        if fake.chunked:
            # Several chunks, an extension and a trailer: all legal, all seen in the wild.
            chunks = [body[i:i + 1000] for i in range(0, len(body), 1000)]
            out = head + "Transfer-Encoding: chunked\r\n\r\n"
            data = out.encode() + b"".join(
                f"{len(c):x}{';x=1' if i == 0 else ''}\r\n".encode() + c + b"\r\n"
                for i, c in enumerate(chunks)) + b"0\r\nX-Trailer: 1\r\n\r\n"
        else:
            data = f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body
        self.wfile.write(data)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: fake_localapi.py SOCKET TABLE.json", file=sys.stderr)
        return 2
    table = json.loads(Path(argv[1]).read_text())
    fake = FakeLocalAPI(argv[0], table.get("status"), table.get("whois"), table.get("dns"),
                        usermetrics=table.get("usermetrics"))
    fake.slow = bool(table.get("slow"))
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    with fake:
        done.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
