"""A pool of kernel pipes for the splice relay.

A tunnel only holds a pipe while bytes sit in it; an empty pipe goes back to the pool. So an
idle tunnel costs no pipe at all (two fds and about 10 kB of kernel memory saved per
direction), and a busy proxy reuses a handful of pipes instead of making and sizing a new
pair for every connection.
"""

from __future__ import annotations

import contextlib
import fcntl
import os

PIPE_SIZE = 1 << 20  # big pipes mean few splice calls per MiB moved
POOL_MAX = 64  # empty pipes kept for reuse; more are closed


class PipePool:
    def __init__(self, size: int = PIPE_SIZE, keep: int = POOL_MAX) -> None:
        self.keep = keep
        self._free: list[tuple[int, int]] = []
        self.size = self._probe(size)
        self.created = 0

    def _probe(self, wanted: int) -> int:
        """The size pipes get here: F_SETPIPE_SZ beyond /proc/sys/fs/pipe-max-size needs
        CAP_SYS_RESOURCE, so an unprivileged run falls back to what it may have."""
        read, write = self.new()
        try:
            for size in (wanted, 256 * 1024, 64 * 1024):
                with contextlib.suppress(OSError):
                    return fcntl.fcntl(write, fcntl.F_SETPIPE_SZ, size)
            return fcntl.fcntl(write, fcntl.F_GETPIPE_SZ)
        finally:
            os.close(read)
            os.close(write)

    @staticmethod
    def new() -> tuple[int, int]:
        return os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def take(self) -> tuple[int, int]:
        """An empty pipe (read fd, write fd); OSError (EMFILE) when none can be made."""
        if self._free:
            return self._free.pop()
        read, write = self.new()
        with contextlib.suppress(OSError):
            # Past the per-user pipe budget (pipe-user-pages-soft) the kernel refuses big
            # pipes to unprivileged users: a small pipe is slower, not wrong.
            fcntl.fcntl(write, fcntl.F_SETPIPE_SZ, self.size)
        self.created += 1
        return read, write

    def give(self, pipe: tuple[int, int]) -> None:
        """Return an EMPTY pipe; a pipe that may still hold bytes must be closed instead."""
        if len(self._free) < self.keep:
            self._free.append(pipe)
        else:
            self.close(pipe)

    @staticmethod
    def close(pipe: tuple[int, int]) -> None:
        os.close(pipe[0])
        os.close(pipe[1])

    def clear(self) -> None:
        while self._free:
            self.close(self._free.pop())

    @property
    def idle(self) -> int:
        return len(self._free)
