"""A stand-in for systemd's private D-Bus socket, for processes under test that ask unit
states with pystemd (the proxy's status page): it speaks D-Bus itself, peer to peer as
systemd's /run/systemd/private does (SASL EXTERNAL, then little-endian messages), and
answers the two calls tsproxy.systemd.show makes: Manager.ListUnitsByNames and
Properties.Get. Unit states come from a JSON file read at each call, as tests/fake_systemd.py
reads them ({"unit": {"ActiveState": ..., ...}}; a unit not in it is loaded and inactive).

Usage: systemd_bus.py SOCKET STATES.json; prints a line once it listens."""

from __future__ import annotations

import json
import os
import socketserver
import struct
import sys
from pathlib import Path
from typing import Any

DEFAULTS = {"LoadState": "loaded", "ActiveState": "inactive", "SubState": "dead",
            "Result": "success"}
CALL, RETURN, ERROR = 1, 2, 3
PATH, INTERFACE, MEMBER, ERROR_NAME, REPLY_SERIAL, SIGNATURE = 1, 2, 3, 4, 5, 8
GUID = "0123456789abcdef0123456789abcdef"


class Writer:
    """D-Bus marshalling, little-endian, for the few types the answers use."""

    def __init__(self) -> None:
        self.data = bytearray()

    def align(self, size: int) -> None:
        self.data += b"\0" * (-len(self.data) % size)

    def uint(self, value: int) -> None:
        self.align(4)
        self.data += struct.pack("<I", value)

    def string(self, text: str, kind: str = "s") -> None:
        raw = text.encode()
        if kind == "g":
            self.data += bytes([len(raw)]) + raw + b"\0"
        else:
            self.uint(len(raw))
            self.data += raw + b"\0"

    def value(self, kind: str, value: Any) -> None:
        if kind == "u":
            self.uint(value)
        else:
            self.string(value, kind)

    def structs(self, rows: list[list[tuple[str, Any]]]) -> None:
        """An array of structs, each given as (type code, value) pairs."""
        self.uint(0)
        at = len(self.data)
        self.align(8)
        start = len(self.data)
        for row in rows:
            self.align(8)
            for kind, value in row:
                self.value(kind, value)
        self.data[at - 4:at] = struct.pack("<I", len(self.data) - start)


class Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def align(self, size: int) -> None:
        self.at += -self.at % size

    def uint(self) -> int:
        self.align(4)
        (value,) = struct.unpack_from("<I", self.data, self.at)
        self.at += 4
        return int(value)

    def string(self, kind: str = "s") -> str:
        size = self.data[self.at] if kind == "g" else self.uint()
        self.at += 1 if kind == "g" else 0
        text = self.data[self.at:self.at + size].decode()
        self.at += size + 1
        return text

    def strings(self) -> list[str]:
        end = self.uint()
        end += self.at
        found = []
        while self.at < end:
            found.append(self.string())
        return found


def message(kind: int, serial: int, fields: list[tuple[int, str, Any]], signature: str,
            body: bytes) -> bytes:
    head = Writer()
    head.data += struct.pack("<cBBBII", b"l", kind, 1, 1, len(body), serial)
    if signature:
        fields = [*fields, (SIGNATURE, "g", signature)]
    head.uint(0)
    start = len(head.data)
    for code, kind_, value in fields:
        head.align(8)
        head.data += bytes([code])
        head.string(kind_, "g")
        head.value(kind_, value)
    head.data[start - 4:start] = struct.pack("<I", len(head.data) - start)
    head.align(8)
    return bytes(head.data) + body


def object_path(unit: str) -> str:
    """A unit's object path, escaped as systemd (and pystemd's path_encode) does."""
    return "/org/freedesktop/systemd1/unit/" + "".join(
        c if c.isalnum() else f"_{ord(c):02x}" for c in unit)


class Bus(socketserver.StreamRequestHandler):
    states = Path()  # set by main()
    serial = 0  # of the messages sent, over every connection

    def handle(self) -> None:
        # SASL: sd-bus sends its uid with AUTH EXTERNAL (or asks for DATA), maybe
        # NEGOTIATE_UNIX_FD, then BEGIN, all at once; the messages follow.
        while (line := self.rfile.readline().lstrip(b"\0").strip()) != b"BEGIN":
            if not line:
                return
            if line == b"AUTH EXTERNAL":
                self.wfile.write(b"DATA\r\n")
            elif line.startswith((b"AUTH EXTERNAL ", b"DATA")):
                self.wfile.write(f"OK {GUID}\r\n".encode())
            elif line == b"NEGOTIATE_UNIX_FD":
                self.wfile.write(b"AGREE_UNIX_FD\r\n")
            else:
                self.wfile.write(b"ERROR\r\n")
        while head := self.rfile.read(16):
            if len(head) < 16:
                return
            _, kind, _, _, length, serial, fields_length = struct.unpack("<cBBBIII", head)
            rest = self.rfile.read(fields_length + (-(16 + fields_length) % 8) + length)
            header = Reader(head + rest)
            header.at = 16
            fields: dict[int, Any] = {}
            while header.at < 16 + fields_length:
                header.align(8)
                code = header.data[header.at]
                header.at += 1
                signature = header.string("g")
                fields[code] = header.uint() if signature == "u" else header.string(signature)
            header.align(8)
            body = Reader(header.data[header.at:])
            if kind == CALL:
                self.wfile.write(self.answer(serial, fields, body))

    def answer(self, serial: int, fields: dict[int, Any], body: Reader) -> bytes:
        Bus.serial += 1
        reply = [(REPLY_SERIAL, "u", serial)]
        table = json.loads(self.states.read_text()) if self.states.exists() else {}
        out = Writer()
        if fields.get(MEMBER) == "ListUnitsByNames":
            rows = []
            for name in body.strings():
                unit = {**DEFAULTS, **table.get(name, {})}
                rows.append([("s", name), ("s", ""), ("s", unit["LoadState"]),
                             ("s", unit["ActiveState"]), ("s", unit["SubState"]), ("s", ""),
                             ("o", object_path(name)), ("u", 0), ("s", ""), ("o", "/")])
            out.structs(rows)
            return message(RETURN, Bus.serial, reply, "a(ssssssouso)", bytes(out.data))
        if fields.get(MEMBER) == "Get":
            body.string()
            prop = body.string()
            unit = next((u for n, u in table.items() if object_path(n) == fields.get(PATH)),
                        {})
            out.string("s", "g")
            out.string(str({**DEFAULTS, **unit}.get(prop, "")))
            return message(RETURN, Bus.serial, reply, "v", bytes(out.data))
        out.string(f"no {fields.get(MEMBER)} here")
        return message(ERROR, Bus.serial, [*reply, (ERROR_NAME, "s",
                                                    "org.freedesktop.DBus.Error.UnknownMethod")],
                       "s", bytes(out.data))


def main() -> None:
    path, Bus.states = sys.argv[1], Path(sys.argv[2])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    server = socketserver.ThreadingUnixStreamServer(path, Bus)
    server.daemon_threads = True
    print("listening", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
