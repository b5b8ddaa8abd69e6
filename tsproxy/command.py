"""Running ip, nft and systemctl for netns.py, forwarding.py and migrate.py: a failure is one
TsproxyError line naming the command (for a batch, its failing line) and the tool's first
complaint."""

from __future__ import annotations

import re
import subprocess

from .errors import TsproxyError

COMMAND_TIMEOUT = 10
PACKAGES = {"ip": "iproute2", "nft": "nftables"}


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
    """One line: the command that failed (for a batch, its failing line) and ip's or nft's
    first complaint."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    command = " ".join(argv)
    # ip -batch ends with "Command failed -:N"; nft -f - starts with "/dev/stdin:N:...".
    where = re.search(r"Command failed -:(\d+)$|^/dev/stdin:(\d+):", stderr, re.MULTILINE)
    if stdin is not None and where:
        number = int(where[1] or where[2])
        failing = stdin.splitlines()[number - 1].strip() if number <= stdin.count("\n") else ""
        if argv[0] == "ip":
            command = " ".join([a for a in argv if a not in ("-batch", "-")] + [failing])
        else:
            command = f"{command} (line {number}: {failing})"
    complaint = next((line for line in lines if not line.startswith("Command failed")), "failed")
    return f"{command}: {complaint}"
