"""Running ip and systemctl for netns.py and migrate.py: a failure is one TsproxyError line
naming the command (for an `ip -batch`, its failing line) and the tool's first complaint.
nftables is not run here: nftlib.py talks to libnftables in the process."""

from __future__ import annotations

import re
import subprocess

from .errors import TsproxyError

COMMAND_TIMEOUT = 10
PACKAGES = {"ip": "iproute2"}


def run(argv: list[str], stdin: str | None = None, timeout: float = COMMAND_TIMEOUT) -> str:
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True,
                              timeout=timeout)
    except FileNotFoundError:
        raise TsproxyError(f"{argv[0]} not found: install the {PACKAGES.get(argv[0], argv[0])} "
                           "package") from None
    except subprocess.TimeoutExpired:
        raise TsproxyError(f"{' '.join(argv)} did not finish in {timeout:g} s") from None
    if done.returncode != 0:
        raise TsproxyError(failure(argv, stdin, done.stderr))
    return done.stdout


def failure(argv: list[str], stdin: str | None, stderr: str) -> str:
    """One line: the command that failed (for a batch, its failing line) and the tool's first
    complaint."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    command = " ".join(argv)
    # ip -batch ends with "Command failed -:N".
    where = re.search(r"Command failed -:(\d+)$", stderr, re.MULTILINE)
    if stdin is not None and where:
        number = int(where[1])
        failing = stdin.splitlines()[number - 1].strip() if number <= stdin.count("\n") else ""
        command = " ".join([a for a in argv if a not in ("-batch", "-")] + [failing])
    complaint = next((line for line in lines if not line.startswith("Command failed")), "failed")
    return f"{command}: {complaint}"
