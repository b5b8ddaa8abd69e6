"""Unit states from systemd, for `tsproxy status`, `list` and `doctor`.

`systemctl show` rather than pystemd: one fork answers for every unit of every instance at
once, it works for any user with or without a D-Bus system bus (as root systemctl talks to
systemd's private socket), and tests swap in a fake systemctl through TSPROXY_SYSTEMCTL
instead of faking D-Bus. pystemd stays the package's dependency for what needs D-Bus.
"""

from __future__ import annotations

import os
import subprocess

from .errors import TsproxyError

PROPERTIES = ("Id", "LoadState", "ActiveState", "SubState", "Result")
TIMEOUT = 15


def systemctl() -> str:
    # Tests point this at a fake; installed systems never set it.
    return os.environ.get("TSPROXY_SYSTEMCTL", "systemctl")


def show(units: list[str], properties: tuple[str, ...] = PROPERTIES) -> dict[str, dict[str, str]]:
    """`properties` of each unit, by unit name. A unit systemd does not know still gets an
    answer (LoadState=not-found, ActiveState=inactive), so every name is a key."""
    if not units:
        return {}
    argv = [systemctl(), "show", f"--property={','.join(properties)}", "--", *units]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT)
    except FileNotFoundError:
        raise TsproxyError(f"{argv[0]} not found: tsproxy needs systemd") from None
    except subprocess.TimeoutExpired:
        raise TsproxyError(f"systemctl show did not answer in {TIMEOUT} s") from None
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        raise TsproxyError(f"systemctl show failed: {lines[0] if lines else done.returncode}")
    # One block of KEY=VALUE lines per unit, in the order asked, blank lines between.
    states: dict[str, dict[str, str]] = {}
    for block in done.stdout.strip("\n").split("\n\n"):
        values = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        if "Id" in values:
            states[values["Id"]] = values
    return {unit: states.get(unit, {"Id": unit, "LoadState": "not-found",
                                    "ActiveState": "inactive", "SubState": "dead",
                                    "Result": "success"}) for unit in units}
