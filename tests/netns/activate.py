"""systemd's socket hand-over (sd_listen_fds(3)) for sockets of both kinds, which Debian's
systemd-socket-activate cannot mix in one run: binds each `-l IP:PORT` (stream, listening)
and `-d IP:PORT` (datagram) in the order given, passes them as descriptors 3, 4, ... with
LISTEN_FDS and LISTEN_PID, and execs the command, which keeps the pid, as systemd's exec of a
service does. `-E VAR=VALUE` sets the command's environment.

    activate.py -l 100.80.0.1:1080 -d 100.80.0.1:15353 -E X=1 -- COMMAND...
"""

from __future__ import annotations

import os
import socket
import sys


def bind(where: str, kind: socket.SocketKind) -> socket.socket:
    host, _, port = where.rpartition(":")
    host = host.strip("[]")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, int(port)))
    if kind == socket.SOCK_STREAM:
        sock.listen(4096)
    return sock


def main(argv: list[str]) -> None:
    split = argv.index("--")
    options, command = argv[:split], argv[split + 1:]
    sockets = []
    for flag, value in zip(options[::2], options[1::2], strict=True):
        if flag == "-E":
            name, _, text = value.partition("=")
            os.environ[name] = text
        else:
            sockets.append(bind(value, socket.SOCK_STREAM if flag == "-l" else socket.SOCK_DGRAM))
            print(f"Listening on {value} ({'stream' if flag == '-l' else 'datagram'})",
                  file=sys.stderr, flush=True)
    for number, sock in enumerate(sockets, start=3):
        if sock.fileno() != number:
            os.dup2(sock.fileno(), number)
        os.set_inheritable(number, True)  # dup2 onto itself would leave close-on-exec set
    os.environ.update(LISTEN_FDS=str(len(sockets)), LISTEN_PID=str(os.getpid()))
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
