"""Logging for a generator: at boot there is no journal yet, only the kernel log.

Lines go to /dev/kmsg as `<PRIO>tsproxy-generator[PID]: MESSAGE` (the journal later picks
them up with the right priority). Containers have no /dev/kmsg, so there they go straight
to the journal's socket, and to stderr when neither can be reached or SYSTEMD_LOG_TARGET
says console. SYSTEMD_LOG_LEVEL filters, as for systemd's own generators.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

LEVELS = {"emerg": 0, "alert": 1, "crit": 2, "err": 3, "warning": 4, "notice": 5,
          "info": 6, "debug": 7}
ERR, WARNING, INFO, DEBUG = 3, 4, 6, 7
JOURNAL_SOCKET = "/run/systemd/journal/socket"

Writer = Callable[[int, str], object]


def _max_level() -> int:
    value = os.environ.get("SYSTEMD_LOG_LEVEL", "info")
    return int(value) if value.isdigit() else LEVELS.get(value, INFO)


def _kmsg_writer(ident: str) -> Writer | None:
    try:
        # No O_CREAT: where /dev/kmsg is missing (containers), never make a plain file of it.
        kmsg = os.open("/dev/kmsg", os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return None
    prefix = f"{ident}[{os.getpid()}]: "
    # One write() per line: kmsg takes one record per write.
    return lambda level, message: os.write(
        kmsg, f"<{level}>{prefix}{message}\n".encode("utf-8", "replace"))


def _journal_writer(ident: str) -> Writer | None:
    import socket  # only where there is no kmsg: keeps the common boot path light

    journal = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        journal.connect(JOURNAL_SOCKET)
    except OSError:
        journal.close()
        return None
    # The journal's native protocol: one datagram of KEY=VALUE lines per entry.
    return lambda level, message: journal.send(
        f"PRIORITY={level}\nSYSLOG_IDENTIFIER={ident}\nMESSAGE={message}\n"
        .encode("utf-8", "replace"))


class Log:
    def __init__(self, ident: str) -> None:
        self.ident = ident
        self.max_level = _max_level()
        self.writer: Writer | None = None
        self.opened = False

    def _open(self) -> Writer | None:
        if os.environ.get("SYSTEMD_LOG_TARGET", "kmsg") == "console":
            return None
        return _kmsg_writer(self.ident) or _journal_writer(self.ident)

    def __call__(self, level: int, message: str) -> None:
        if level > self.max_level:
            return
        if not self.opened:
            self.writer, self.opened = self._open(), True
        if self.writer:
            try:
                self.writer(level, message)
                return
            except OSError:
                pass
        sys.stderr.write(f"{self.ident}: {message}\n")
