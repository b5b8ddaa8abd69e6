"""nftables through libnftables (Debian's python3-nftables), in this process: nothing forks
`nft`. The watchdog lists its tables every 2 s here, and `up` and `down` load their
transactions here. A refusal is one NftError line: what was asked (for a transaction, its
failing line) and nft's first complaint.

A libnftables context keeps state (its output flags, a cache of the ruleset that it
refreshes when the kernel's ruleset changes) and is not safe to share between threads:
tsproxy makes one per process, on first use, and calls it from one thread only. The
generator never comes here.
"""

from __future__ import annotations

import os
import re
from typing import Any

from .errors import TsproxyError

PACKAGE = "python3-nftables"

_context: Any = None  # the process's libnftables context, made by _nft()


class NftError(TsproxyError):
    """nftables refused what was asked: no such table or chain, a bad rule, no permission."""


def listing(command: str) -> str:
    """The JSON of a list command ("list chains"), as `nft -j list chains` prints it."""
    rc, output, error = _nft().cmd(command)
    if rc != 0:
        raise NftError(f"nft {command}: {_first_complaint(error)}")
    text: str = output
    return text


def load(transaction: str) -> None:
    """Load a transaction in nft's language, as `nft -f -` would: all of it or none."""
    # From a file, not a buffer: nft's complaint then starts "FILE:LINE:COLUMNS:" (from a
    # buffer, libnftables 1.0.6 quotes the buffer's first line, whichever line failed).
    # A memfd is a regular file that no other process sees and nothing has to delete.
    with os.fdopen(os.memfd_create("tsproxy-nft", os.MFD_CLOEXEC), "w+",
                   encoding="utf-8") as file:
        file.write(transaction)
        file.flush()
        path = f"/proc/self/fd/{file.fileno()}"
        rc, _, error = _nft().cmd_from_file(path)
    if rc != 0:
        raise NftError(failure(transaction, path, error))


def failure(transaction: str, path: str, error: str) -> str:
    """One line from nft's complaint about a transaction loaded from path: the line it
    refused and what it said of it."""
    where = re.search(rf"^{re.escape(path)}:(\d+):[\d-]+: (.*)$", error, re.MULTILINE)
    if where is None:
        return f"nft transaction: {_first_complaint(error)}"
    number, lines = int(where[1]), transaction.splitlines()
    failing = lines[number - 1].strip() if number <= len(lines) else ""
    return f"nft transaction (line {number}: {failing}): {where[2]}"


def _first_complaint(error: str) -> str:
    return next((line.strip() for line in error.splitlines() if line.strip()), "failed")


def _nft() -> Any:
    global _context
    if _context is None:
        try:
            # Lazily: only root's commands touch nftables, and a missing package is a line.
            from nftables import Nftables  # type: ignore[import-untyped]
            context = Nftables()
        except (ImportError, OSError):  # the module, or the libnftables1 it loads
            raise TsproxyError(f"libnftables not found: install the {PACKAGE} package") \
                from None
        # Listings in JSON, as `nft -j` prints them: parsed, never scraped. Transactions
        # in nft's own language still load: libnftables tries JSON first, then the text.
        context.set_json_output(True)
        _context = context
    return _context
