"""Idle TCP clients for the DNS responder's idle-timeout test, run in the client namespace.

    idleclients.py IP PORT COUNT SECONDS
        open COUNT TCP connections at once and send nothing; print "connected N" once the
        handshakes are done (or 5 s passed), then SECONDS after the start print
        "open N": how many the server has not closed (still connecting counts as open)
"""

from __future__ import annotations

import errno
import resource
import select
import socket
import sys
import time


def still_open(sock: socket.socket) -> bool:
    try:
        return sock.recv(1, socket.MSG_DONTWAIT) != b""
    except BlockingIOError:
        return True  # connected and quiet, or still connecting
    except OSError:
        return False  # reset by the server


def main() -> None:
    ip, port, count, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    start = time.monotonic()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, count + 100)), hard))
    socks = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        error = sock.connect_ex((ip, port))
        assert error in (0, errno.EINPROGRESS), errno.errorcode[error]
        socks.append(sock)
    poller = select.poll()
    for sock in socks:
        poller.register(sock, select.POLLOUT)
    waiting = {sock.fileno() for sock in socks}
    while waiting and time.monotonic() < start + 5:
        for fd, _ in poller.poll(100):
            waiting.discard(fd)
            poller.unregister(fd)
    print(f"connected {count - len(waiting)}", flush=True)
    time.sleep(max(0.0, start + seconds - time.monotonic()))
    print(f"open {sum(still_open(sock) for sock in socks)}", flush=True)


if __name__ == "__main__":
    main()
