#!/usr/bin/python3
"""A fake `systemctl` for unit tests of what tsproxy still forks systemctl for (migrate's
`systemctl disable --now`): records the arguments in FAKE_SYSTEMCTL_LOG and succeeds. Unit
states come from tests/fake_systemd.py, as tsproxy asks systemd for them over D-Bus."""

import os
import sys


def main(argv: list[str]) -> int:
    if os.environ.get("FAKE_SYSTEMCTL_LOG"):
        with open(os.environ["FAKE_SYSTEMCTL_LOG"], "a", encoding="utf-8") as log:
            log.write(" ".join(argv) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
