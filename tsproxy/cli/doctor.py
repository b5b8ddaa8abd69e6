"""`tsproxy doctor [--fix] [NAME]`: run every check, print each failure with the command
that fixes it; `--fix` runs the safe ones (restarts and reloads, see tsproxy/health.py) and
checks again. A fix that is a systemctl verb goes to systemd over D-Bus, and doctor waits for
each job it starts, as systemctl would.

Exit status 0 when everything checked is fine (after the fixes, with --fix), 3 when not.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from .. import doctor, health, systemd
from ..errors import TsproxyError
from ..health import Finding
from ..instances import checked_name, conf_dir, load_instances
from ..netns import require_root
from ..status import gather
from .list import generated

UNHEALTHY = 3
SETTLE = 10.0  # seconds a fix may take before the checks run again
JOB_TIMEOUT = 60.0  # seconds for systemd to finish a fix's jobs


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", metavar="NAME",
                        help="the instance to check (default: every conf)")
    parser.add_argument("--fix", action="store_true",
                        help="run the fixes that are safe (restart or reload units; never "
                             "delete state), then check again")


def run(args: argparse.Namespace) -> int:
    if args.name:
        checked_name(args.name)
    require_root("doctor", "it reads nftables and every namespace")
    findings = examine(args.name)
    report(findings)
    if args.fix:
        commands = list(dict.fromkeys(f.fix for f in findings if f.safe and f.fix))
        if commands:
            for command in commands:
                print(f"fixing: {command}", flush=True)
                for line in fix(command):
                    print(f"  failed: {line}")
            findings = settle(args.name)
            print("after the fixes:")
            report(findings)
    return 0 if all(f.ok for f in findings) else UNHEALTHY


def fix(command: str) -> list[str]:
    """Run one fix; what went wrong, one line each. `systemctl VERB UNIT...` and `systemctl
    daemon-reload` go to systemd over D-Bus, anything else runs as a command."""
    argv = command.split()
    try:
        if argv[:2] == ["systemctl", "daemon-reload"]:
            systemd.reload()
            return []
        if argv[0] == "systemctl" and len(argv) > 2 and argv[1] in systemd.VERBS:
            return systemd.run_jobs([(argv[1], systemd.unit_name(unit)) for unit in argv[2:]],
                                    JOB_TIMEOUT)
    except TsproxyError as error:
        return [str(error)]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=JOB_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as error:
        return [str(error)]
    return [] if done.returncode == 0 else [done.stderr.strip() or f"exit {done.returncode}"]


def examine(name: str | None) -> list[Finding]:
    good, errors = load_instances()
    bad = {os.path.basename(e.path)[: -len(".conf")]: str(e) for e in errors}
    if name is not None:
        if name not in bad and name not in {conf.name for conf in good}:
            raise TsproxyError(f"no instance {name!r}: "
                               f"{os.path.join(conf_dir(), name + '.conf')} does not exist")
        good = [conf for conf in good if conf.name == name]
        bad = {n: e for n, e in bad.items() if n == name}
    findings = []
    statuses = {status.name: status for status in gather(good, bad)}
    for bad_name, error in sorted(bad.items()):
        findings += doctor.conf_findings(bad_name, error, "no")
    for conf in sorted(good, key=lambda c: c.name):
        findings += doctor.conf_findings(conf.name, None, generated(conf.name, conf.path))
        status = statuses[conf.name]
        if status.units.get("instance") == "inactive" and not conf.autostart:
            findings.append(Finding(conf.name, "instance started", None))  # stopped on purpose
            continue
        findings += health.instance(conf, status, doctor.Deep())
    return [*findings, health.tailscaled_installed(), health.resolv_conf_untouched()]


def settle(name: str | None) -> list[Finding]:
    """Check again until all is well or SETTLE seconds passed: restarted units take a
    moment (tailscaled answers its LocalAPI a little after it starts)."""
    deadline = time.monotonic() + SETTLE
    while True:
        findings = examine(name)
        unfixed = [f for f in findings if f.safe]
        if not unfixed or time.monotonic() > deadline:
            return findings
        time.sleep(0.5)


def report(findings: list[Finding]) -> None:
    for finding in findings:
        if finding.ok:
            print(f"ok    {finding.name}: {finding.check}")
        else:
            print(f"FAIL  {finding.name}: {finding.check}: {finding.problem}")
            print(f"      fix: {finding.fix}{'' if finding.safe else '  (not run by --fix)'}")
    sys.stdout.flush()
