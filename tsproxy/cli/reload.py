"""`tsproxy reload NAME`: a changed conf applied to a running instance, without dropping a
connection; what `systemctl reload tsproxy@NAME` runs.

The conf is checked first (a bad one is one line and nothing is asked of anyone). Then the
proxy reloads (SIGHUP, sent by systemd) and says what it applied or why it applied nothing:
that line is printed, and the exit status is 1 when nothing was applied. The DNS responder,
shared by every instance, reads every conf again too.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time

from tsproxy_generator.vocabulary import DNS_SERVICE, PROXY, PROXY_RELOAD_VERDICT, unit

from .. import systemd
from ..instances import checked_name, get_instance
from ..netns import require_root
from ..status import stats_dir

VERDICT_WAIT = 5.0  # seconds for the proxy to say how its reload went


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="the instance (the conf's file name)")


def run(args: argparse.Namespace) -> int:
    name = checked_name(args.name)
    require_root("reload", "it asks systemd to reload the instance's units")
    conf = get_instance(name)
    proxy = unit(PROXY, name)
    running = [u for u, state in systemd.show([proxy, DNS_SERVICE]).items()
               if state.get("ActiveState") == "active"]
    if conf.dns_listen is None and DNS_SERVICE in running:
        running.remove(DNS_SERVICE)
    started = time.time()
    # SIGHUP as their ExecReload= sends it, but not as a reload job: this runs inside the
    # reload job of tsproxy@NAME, which theirs would wait for (they are ordered after it).
    systemd.signal(running, signal.SIGHUP)
    if proxy not in running:
        print(f"{name}: the proxy is not running: it reads the conf when it starts")
        return 0
    applied, line = verdict(name, started)
    print(f"{name}: {line}")
    return 0 if applied else 1


def verdict(name: str, since: float) -> tuple[bool, str]:
    """The proxy's word on its reload (reconfigure.Reloader writes it)."""
    path = os.path.join(stats_dir(), name, PROXY_RELOAD_VERDICT)
    deadline = time.monotonic() + VERDICT_WAIT
    while time.monotonic() < deadline:
        try:
            with open(path, encoding="utf-8") as file:
                said = json.load(file)
            if said["at"] >= since:
                return bool(said["applied"]), str(said["line"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        time.sleep(0.05)
    return False, ("the proxy did not say how its reload went: see journalctl -u "
                   f"{unit(PROXY, name)}")
