"""Logging for a generator: at boot there is no journal yet, only the kernel log.

Lines go to /dev/kmsg as `<PRIO>tsproxy-generator[PID]: MESSAGE` (the journal later picks
them up with the right priority); stderr when /dev/kmsg cannot be opened or
SYSTEMD_LOG_TARGET says console. SYSTEMD_LOG_LEVEL filters, as for systemd's own generators.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

LEVELS = {"emerg": 0, "alert": 1, "crit": 2, "err": 3, "warning": 4, "notice": 5,
          "info": 6, "debug": 7}
ERR, WARNING, INFO, DEBUG = 3, 4, 6, 7


def _max_level() -> int:
    value = os.environ.get("SYSTEMD_LOG_LEVEL", "info")
    return int(value) if value.isdigit() else LEVELS.get(value, INFO)


def _kmsg_writer() -> Callable[[str], object] | None:
    if os.environ.get("SYSTEMD_LOG_TARGET", "kmsg") not in ("kmsg", "auto", "journal-or-kmsg"):
        return None
    try:
        # Unbuffered: kmsg takes one record per write().
        kmsg = open("/dev/kmsg", "wb", buffering=0)
    except OSError:
        return None
    return lambda line: kmsg.write(line.encode("utf-8", "replace"))


class Log:
    def __init__(self, ident: str) -> None:
        self.ident = ident
        self.max_level = _max_level()
        self.kmsg: Callable[[str], object] | None = None
        self.opened = False

    def __call__(self, level: int, message: str) -> None:
        if level > self.max_level:
            return
        if not self.opened:
            self.kmsg, self.opened = _kmsg_writer(), True
        try:
            if self.kmsg:
                self.kmsg(f"<{level}>{self.ident}[{os.getpid()}]: {message}\n")
                return
        except OSError:
            pass
        sys.stderr.write(f"{self.ident}: {message}\n")
