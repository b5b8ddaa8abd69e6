"""Servers for the proxy tests' target namespace (a stand-in for tailnet peers).

Usage: targets.py; prints a line once every server listens, on every address (dual stack):

    8080  HTTP: GET / answers the client's address; GET /bytes/N answers N bytes (a repeating
          pattern); POST / answers "LENGTH SHA256" of the body it read
    9000  echo: sends back everything, and closes its side after the client's EOF
    2222  banner: speaks first (like sshd), then echoes lines until EOF, then says "bye"
"""

from __future__ import annotations

import asyncio
import hashlib
import socket

PATTERN = bytes(range(256)) * 256  # 64 KiB; /bytes/N repeats it


async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        method, target = head.split(b" ", 2)[:2]
        headers = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:] if b": " in line)
        if method == b"POST":
            body_length = int(headers.get(b"Content-Length", b"0"))
            digest, left = hashlib.sha256(), body_length
            while left:
                chunk = await reader.read(min(left, 1 << 20))
                if not chunk:
                    break
                digest.update(chunk)
                left -= len(chunk)
            await respond(writer, f"{body_length - left} {digest.hexdigest()}\n".encode())
        elif target.startswith(b"/bytes/"):
            size = int(target[len(b"/bytes/"):])
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                         % size)
            while size:
                chunk = PATTERN[:min(size, len(PATTERN))]
                writer.write(chunk)
                size -= len(chunk)
                await writer.drain()
        else:
            peer = writer.get_extra_info("peername")[0]
            await respond(writer, f"{peer.removeprefix('::ffff:')}\n".encode())
    except (OSError, asyncio.IncompleteReadError, ValueError):
        pass
    finally:
        writer.close()


async def respond(writer: asyncio.StreamWriter, body: bytes) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                 % (len(body), body))
    await writer.drain()


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(1 << 16):
            writer.write(chunk)
            await writer.drain()
        writer.write_eof()  # the client's EOF came through; now ours goes back
        await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


async def banner(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        writer.write(b"SSH-2.0-target\n")
        while line := await reader.readline():
            writer.write(b"echo " + line)
        writer.write(b"bye\n")
        await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


async def main() -> None:
    servers = []
    for port, handler in ((8080, http), (9000, echo), (2222, banner)):
        # One dual-stack socket per port: IPv4 clients arrive as ::ffff:A.B.C.D.
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("::", port))
        servers.append(await asyncio.start_server(handler, sock=sock, backlog=4096))
    print("listening", flush=True)
    await asyncio.gather(*(server.serve_forever() for server in servers))


if __name__ == "__main__":
    asyncio.run(main())
