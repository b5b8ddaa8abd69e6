"""Clients that keep asking while something happens to the gateway, and count what failed.

Each Loop runs one command again and again in a thread until stopped; a judge looks at
every run and says what was wrong with it, or None. The commands are third-party clients
(curl, dig) run on this machine inside the container's network namespace.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence

Judge = Callable[[subprocess.CompletedProcess[str]], str | None]
KEEP_FAILURES = 5  # the first few failures are kept for the report


class Loop(threading.Thread):
    def __init__(self, what: str, argv: Sequence[str], judge: Judge,
                 pause: float = 0.0) -> None:
        super().__init__(name=what, daemon=True)
        self.what, self.argv, self.judge, self.pause = what, list(argv), judge, pause
        self.ok = 0
        self.failures: list[str] = []
        self.failed = 0
        self.slowest = 0.0  # seconds of the longest run: what a client waited at worst
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            started = time.monotonic()
            try:
                done = subprocess.run(self.argv, capture_output=True, text=True, timeout=30)
                problem = self.judge(done)
            except subprocess.TimeoutExpired:
                problem = "no answer within 30 s"
            self.slowest = max(self.slowest, time.monotonic() - started)
            if problem is None:
                self.ok += 1
            else:
                self.failed += 1
                if len(self.failures) < KEEP_FAILURES:
                    self.failures.append(problem)
            self._stop_event.wait(self.pause)

    def stop(self) -> None:
        self._stop_event.set()

    def summary(self) -> str:
        return (f"{self.what}: {self.ok} ok, {self.failed} failed {self.failures}, "
                f"slowest {self.slowest:.2f} s")


@contextlib.contextmanager
def looping(loops: Sequence[Loop]) -> Iterator[Sequence[Loop]]:
    for loop in loops:
        loop.start()
    try:
        yield loops
    finally:
        for loop in loops:
            loop.stop()
        for loop in loops:
            loop.join(timeout=60)


def expect_output(expected: str) -> Judge:
    """A run passes when it exits 0 and prints exactly `expected` (whitespace aside)."""
    def judge(done: subprocess.CompletedProcess[str]) -> str | None:
        if done.returncode == 0 and done.stdout.strip() == expected:
            return None
        return f"exit {done.returncode}: {(done.stdout + done.stderr).strip()[:200]!r}"
    return judge


def in_netns(pid: int, *argv: str) -> list[str]:
    """argv run in the network namespace of process `pid` (the container's systemd)."""
    return ["nsenter", "-t", str(pid), "-n", *argv]
