"""A bare SOCKS5 / HTTP CONNECT client that reports the proxy's exact answers, for the tests'
assertions on reply codes (curl and friends are the judges of everything else).

Usage (inside the client namespace):
    rawclient.py PROXY_IP PROXY_PORT socks5|http HOST PORT [--user U:P] [--source IP]
                 [--send TEXT]
Prints one JSON object: the method and login answers, REP / HTTP status, and what came
through the tunnel after sending TEXT (if given) and shutting down the write side.
"""

from __future__ import annotations

import argparse
import base64
import ipaddress
import json
import socket
import sys
from typing import Any

TIMEOUT = 15


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def recv_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def socks5(sock: socket.socket, host: str, port: int, user: str | None,
           result: dict[str, Any]) -> None:
    methods = b"\x02" if user else b"\x00"
    sock.sendall(b"\x05\x01" + methods)
    result["method"] = recv_exactly(sock, 2).hex()
    if result["method"] != ("0502" if user else "0500"):
        return
    if user:
        name, _, password = user.partition(":")
        sock.sendall(bytes([1, len(name)]) + name.encode() + bytes([len(password)])
                     + password.encode())
        result["login"] = recv_exactly(sock, 2).hex()
        if result["login"] != "0100":
            return
    try:
        address = ipaddress.ip_address(host)
        kind = b"\x01" if address.version == 4 else b"\x04"
        sock.sendall(b"\x05\x01\x00" + kind + address.packed + port.to_bytes(2, "big"))
    except ValueError:
        sock.sendall(b"\x05\x01\x00\x03" + bytes([len(host)]) + host.encode()
                     + port.to_bytes(2, "big"))
    head = recv_exactly(sock, 4)
    if len(head) < 4:
        result["rep"] = None
        result["raw"] = head.hex()
        return
    result["rep"] = head[1]
    size = {1: 4, 4: 16}.get(head[3], 0)
    bound = recv_exactly(sock, size + 2)
    if size:
        result["bound"] = [str(ipaddress.ip_address(bound[:size])),
                           int.from_bytes(bound[size:], "big")]


def http(sock: socket.socket, host: str, port: int, user: str | None,
         result: dict[str, Any]) -> None:
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    head = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n"
    if user:
        head += f"Proxy-Authorization: Basic {base64.b64encode(user.encode()).decode()}\r\n"
    sock.sendall((head + "\r\n").encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(1)
        if not chunk:
            break
        answer += chunk
    status_line = answer.split(b"\r\n", 1)[0].decode("latin-1")
    parts = status_line.split(" ")
    result["status"] = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
    result["head"] = answer.decode("latin-1")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("proxy")
    parser.add_argument("proxy_port", type=int)
    parser.add_argument("protocol", choices=["socks5", "http"])
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--user")
    parser.add_argument("--source")
    parser.add_argument("--send")
    args = parser.parse_args()
    sock = socket.create_connection((args.proxy, args.proxy_port), timeout=TIMEOUT,
                                    source_address=(args.source, 0) if args.source else None)
    result: dict[str, Any] = {}
    try:
        handshake = socks5 if args.protocol == "socks5" else http
        handshake(sock, args.host, args.port, args.user, result)
        ok = result.get("rep") == 0 or result.get("status") == 200
        if ok and args.send is not None:
            sock.sendall(args.send.encode())
            sock.shutdown(socket.SHUT_WR)
            result["tunnel"] = recv_all(sock).decode("latin-1")
        elif not ok:
            result["after"] = recv_all(sock).decode("latin-1")  # the proxy must close
    except OSError as error:
        result["error"] = error.strerror or str(error)
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
