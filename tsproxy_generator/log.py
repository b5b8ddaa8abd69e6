"""Logging for a generator: at boot there is no journal yet, only the kernel log.

Lines go to /dev/kmsg as `<PRIO>tsproxy-generator[PID]: MESSAGE` (the journal later picks
them up with the right priority); stderr when /dev/kmsg cannot be opened or
SYSTEMD_LOG_TARGET says console. SYSTEMD_LOG_LEVEL filters, as for systemd's own generators.
"""

from __future__ import annotations

import os
import sys
from typing import TextIO

LEVELS = {"emerg": 0, "alert": 1, "crit": 2, "err": 3, "warning": 4, "notice": 5,
          "info": 6, "debug": 7}
ERR, WARNING, INFO, DEBUG = 3, 4, 6, 7


def _max_level() -> int:
    value = os.environ.get("SYSTEMD_LOG_LEVEL", "info")
    return int(value) if value.isdigit() else LEVELS.get(value, INFO)


def _open_target() -> tuple[TextIO, bool]:
    """(stream, is_kmsg)"""
    if os.environ.get("SYSTEMD_LOG_TARGET", "kmsg") in ("kmsg", "auto", "journal-or-kmsg"):
        try:
            return open("/dev/kmsg", "w", encoding="utf-8", errors="replace"), True
        except OSError:
            pass
    return sys.stderr, False


class Log:
    def __init__(self, ident: str) -> None:
        self.ident = ident
        self.max_level = _max_level()
        self.stream: TextIO | None = None
        self.kmsg = False

    def __call__(self, level: int, message: str) -> None:
        if level > self.max_level:
            return
        if self.stream is None:
            self.stream, self.kmsg = _open_target()
        if self.kmsg:
            line = f"<{level}>{self.ident}[{os.getpid()}]: {message}\n"
        else:
            line = f"{self.ident}: {message}\n"
        try:
            self.stream.write(line)
            self.stream.flush()  # kmsg takes one record per write
        except OSError:
            sys.stderr.write(f"{self.ident}: {message}\n")
