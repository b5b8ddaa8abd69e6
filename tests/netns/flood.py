"""Client-side load for the proxy's limit tests, run inside the client namespace.

    flood.py hold PROXY_IP PORT TARGET_IP TARGET_PORT COUNT SOURCE WAIT
        open COUNT SOCKS5 tunnels at once, print "held N REPLIES" (the REP of each, or why
        none came within WAIT seconds), then keep them open until stdin closes
    flood.py bad PROXY_IP PORT COUNT CONCURRENCY
        COUNT connections sending the issue's bad inputs (and resets, and silence), at most
        CONCURRENCY at once; prints "done N" once all ended
"""

from __future__ import annotations

import asyncio
import socket
import struct
import sys

TARGET = socket.inet_aton("100.70.0.2") + (9000).to_bytes(2, "big")
GREETING = b"\x05\x01\x00"
BAD_INPUTS: list[bytes | None] = [
    b"\x04\x01\x00\x50" + TARGET[:4] + b"\x00",  # SOCKS4
    b"\x05\x00",  # NMETHODS 0
    b"\x05\x05\x00",  # truncated method list, then EOF
    b"\x05\x02\x01\x03",  # only unknown methods
    GREETING + b"\x05\x02\x00\x01" + TARGET,  # BIND
    GREETING + b"\x05\x03\x00\x01" + TARGET,  # UDP ASSOCIATE
    GREETING + b"\x05\x09\x00\x01" + TARGET,  # unknown command
    GREETING + b"\x05\x01\x00\x09" + TARGET,  # unknown address type
    GREETING + b"\x05\x01\x00\x03\x00\x00\x50",  # empty domain
    GREETING + b"\x05\x01\x00\x03\x05ab\x00cd\x00\x50",  # NUL in the domain
    GREETING + b"\x05\x01\x00\x03\x04\xc3\xa9t\xc3\x00\x50",  # non-ASCII domain
    GREETING + b"\x05\x01\x00\x03\xff" + b"a" * 255 + b"\x00\x50",  # 255-byte domain
    GREETING + b"\x05\x01\x00\x01" + TARGET[:4] + b"\x00\x00",  # port 0
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # not CONNECT
    b"CONNECT nonsense\r\n\r\n",  # bad request line
    b"CONNECT host:99999 HTTP/1.1\r\n\r\n",  # bad host:port
    b"CONNECT web.fgpu:80 HTTP/1.1\r\nX: " + b"a" * 70000 + b"\r\n\r\n",  # 64 KiB+ head
    b"CONNECT web.fgpu:80 HTTP/1.1\r\nHost: x",  # no CRLFCRLF: the handshake timeout ends it
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello
    b"",  # connect and say nothing
    None,  # half a greeting, then a reset
]


async def hold(proxy: str, port: int, target: str, target_port: int, count: int,
               source: str | None, wait: float) -> None:
    request = GREETING + b"\x05\x01\x00\x01" + socket.inet_aton(target) + \
        target_port.to_bytes(2, "big")
    writers: list[asyncio.StreamWriter] = []

    async def one() -> str:
        try:
            reader, writer = await asyncio.open_connection(
                proxy, port, local_addr=(source, 0) if source else None)
            writers.append(writer)
            writer.write(request)
            answer = await asyncio.wait_for(reader.readexactly(12), wait)
            return str(answer[3])
        except asyncio.IncompleteReadError:
            return "closed"
        except (TimeoutError, OSError) as error:
            return type(error).__name__

    replies = await asyncio.gather(*(one() for _ in range(count)))
    print(f"held {replies.count('0')} {','.join(replies)}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for writer in writers:
        writer.close()


async def bad(proxy: str, port: int, count: int, concurrency: int) -> None:
    limit = asyncio.Semaphore(concurrency)

    async def one(n: int) -> None:
        async with limit:
            data = BAD_INPUTS[n % len(BAD_INPUTS)]
            try:
                reader, writer = await asyncio.open_connection(proxy, port)
            except OSError:
                return
            sock = writer.get_extra_info("socket")
            try:
                if data is None:
                    writer.write(b"\x05\x02")
                    await writer.drain()
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    writer.transport.abort()
                    return
                writer.write(data)
                await writer.drain()
                await asyncio.wait_for(reader.read(), 30)  # until the proxy closes
            except (TimeoutError, OSError):
                pass
            finally:
                writer.close()

    await asyncio.gather(*(one(n) for n in range(count)))
    print(f"done {count}", flush=True)


def main() -> None:
    command, *args = sys.argv[1:]
    if command == "hold":
        proxy, port, target, target_port, count, source, wait = args
        asyncio.run(hold(proxy, int(port), target, int(target_port), int(count), source,
                         float(wait)))
    else:
        proxy, port, count, concurrency = args
        asyncio.run(bad(proxy, int(port), int(count), int(concurrency)))


if __name__ == "__main__":
    main()
