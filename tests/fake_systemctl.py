#!/usr/bin/python3
"""A fake `systemctl show --property=A,B -- UNIT...` for unit tests: answers from the JSON
file named by FAKE_SYSTEMCTL_UNITS ({"unit": {"ActiveState": ..., ...}}); a unit not in it is
loaded and inactive, as an instance of a shipped template that never started. Also answers
`systemctl restart ...` by recording the arguments in FAKE_SYSTEMCTL_LOG."""

import json
import os
import sys

DEFAULTS = {"LoadState": "loaded", "ActiveState": "inactive", "SubState": "dead",
            "Result": "success", "UnitFileState": "disabled"}


def main(argv: list[str]) -> int:
    if os.environ.get("FAKE_SYSTEMCTL_LOG"):
        with open(os.environ["FAKE_SYSTEMCTL_LOG"], "a", encoding="utf-8") as log:
            log.write(" ".join(argv) + "\n")
    if not argv or argv[0] != "show":
        return 0
    properties = next(a.split("=", 1)[1] for a in argv if a.startswith("--property="))
    units = argv[argv.index("--") + 1:]
    with open(os.environ["FAKE_SYSTEMCTL_UNITS"], encoding="utf-8") as file:
        table = json.load(file)
    blocks = []
    for unit in units:
        values = {"Id": unit, **DEFAULTS, **table.get(unit, {})}
        blocks.append("".join(f"{p}={values[p]}\n" for p in properties.split(",")))
    sys.stdout.write("\n".join(blocks))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
