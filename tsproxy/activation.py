"""What systemd hands a service: sockets (sd_listen_fds(3)), or bound here for a standalone
run, and its RuntimeDirectory."""

from __future__ import annotations

import os
import socket

from validate import ValidateError

from tsproxy_generator.model import Listen
from tsproxy_generator.values import check_listen

from .errors import TsproxyError

SD_LISTEN_FDS_START = 3
BACKLOG = 4096  # as systemd's socket units default to


def inherited_sockets() -> list[socket.socket]:
    """The sockets systemd passed this process, in the order of the socket unit's Listen
    lines; [] when it passed none."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return []
    count = int(os.environ.get("LISTEN_FDS", "0") or 0)
    # Not for our children: they are not the process the sockets were meant for.
    for variable in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(variable, None)
    sockets = [socket.socket(fileno=fd)
               for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count)]
    for sock in sockets:
        os.set_inheritable(sock.fileno(), False)
    return sockets


def runtime_file(name: str) -> str | None:
    """`name` in the unit's RuntimeDirectory (systemd made it, and removes it when the unit
    stops); None without one."""
    runtime = os.environ.get("RUNTIME_DIRECTORY")
    return os.path.join(runtime.split(":")[0], name) if runtime else None


def bind(listen: Listen, kind: socket.SocketKind = socket.SOCK_STREAM) -> socket.socket:
    """A socket bound to ``listen`` (and listening, for a stream socket)."""
    family = socket.AF_INET if listen.address.version == 4 else socket.AF_INET6
    sock = socket.socket(family, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((str(listen.address), listen.port))
        if kind == socket.SOCK_STREAM:
            sock.listen(BACKLOG)
    except OSError as error:
        sock.close()
        raise TsproxyError(f"--listen {listen}: {error.strerror}") from None
    return sock


def parse_listen(text: str) -> Listen:
    """``--listen IP:PORT``, with the conf's syntax and messages."""
    try:
        listen = check_listen(text)
    except ValidateError as error:
        raise TsproxyError(f"--listen: {error}") from None
    assert isinstance(listen, Listen)
    return listen
