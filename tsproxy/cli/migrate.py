"""`tsproxy migrate NAME`: move a tailnet from a hand-made setup (a namespace of one's own,
socat on the proxy port, CoreDNS on :53, a second tailscaled) to tsproxy@NAME, keeping the
node (same key, same 100.x address, no new login) and the clients' setup.

Without options it only says what it found and the commands to run. --stop and
--state-from run them; anything they could not finish is refused before any change.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from tsproxy_generator import vocabulary

from .. import migrate
from ..instances import get_instance, state_dir
from ..migrate import Plan
from ..netns import require_root


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="instance (the conf's file name)")
    parser.add_argument("--from-netns", metavar="NS",
                        help="the old setup's namespace (default: the one its units use)")
    parser.add_argument("--state-from", metavar="PATH",
                        help="copy the old tailscaled's --statedir (or --state file) in as "
                             "the instance's, so the node keeps its identity")
    parser.add_argument("--stop", action="store_true",
                        help="stop and disable the old units and delete the old namespace")
    parser.add_argument("--force", action="store_true",
                        help="with --state-from: replace a state the instance already has "
                             "(it is renamed aside, not deleted)")


def run(args: argparse.Namespace) -> int:
    conf = get_instance(args.name)
    require_root("migrate", "it reads every process's sockets and tailscaled's state")
    plan = migrate.plan(conf, args.from_netns, args.state_from)
    copy = args.state_from is not None
    migrate.check_ready(plan, stop=args.stop, copy=copy, force=args.force)
    print(report(plan, args.from_netns, acting=args.stop or copy))
    if args.stop:
        migrate.stop(plan)
    if copy:
        assert plan.state_from is not None
        aside = migrate.copy_state(plan.state_from, conf.name)
        print(f"copied {plan.state_from} to {state_dir(conf.name)}"
              f"{f' (the state it had is now {aside})' if aside else ''}")
    if args.stop and not copy and plan.state_from:
        # Started now, the instance would be a new node: say how to keep the old one.
        print(f"next: tsproxy migrate {conf.name} --state-from {shlex.quote(plan.state_from)}"
              f"{' --force' if plan.has_state else ''} (keeps the node), then "
              f"systemctl start {instance_unit(conf.name)}")
    elif args.stop or copy:
        print(f"next: systemctl start {instance_unit(conf.name)}; tsproxy status {conf.name}")
    sys.stdout.flush()
    return 0


def report(plan: Plan, from_netns: str | None, acting: bool) -> str:
    name = plan.conf.name
    lines = [f"{name}: the hand-made setup"
             f"{f' in namespace {plan.netns}' if plan.netns else ''}:"]
    width = max((len(unit.name) for unit in plan.units), default=0)
    lines += [f"  {unit.name.ljust(width)}  {unit.state.ljust(17)}  {unit.why}"
              for unit in plan.units] or ["  no old units found"]
    lines += [f"{held}" for held in plan.held]
    if problem := plan.listen_problem:
        lines.append(problem)
    elif plan.old_listen:
        lines.append(f"clients keep their setup: the old proxy listened on {plan.old_listen}, "
                     f"tsproxy listens on {plan.conf.listen}")
    if acting:
        return "\n".join(lines)
    steps = [f"systemctl stop {instance_unit(name)}"] if plan.instance_running else []
    if plan.to_stop:
        steps.append(f"systemctl disable --now {' '.join(plan.to_stop)}")
    steps += [f"stop {holder} (it is no unit of the old setup)" for holder in plan.strangers]
    if plan.netns:
        steps.append(f"ip netns del {plan.netns}  (if it is still there)")
    migrate_command = f"tsproxy migrate {name}"
    if from_netns:
        migrate_command += f" --from-netns {shlex.quote(from_netns)}"
    copy_options = f" --state-from {shlex.quote(plan.state_from or '')}" + \
        (" --force" if plan.has_state else "")
    if plan.state_from:
        steps.append(f"{migrate_command}{copy_options}  (the node keeps its key and 100.x "
                     "address: no new login" + (f"; --force: the node {instance_unit(name)} made "
                                               "is kept aside" if plan.has_state else "") + ")")
    steps.append(f"systemctl start {instance_unit(name)}")
    if not plan.state_from:
        steps.append(f"tsproxy login {name}  (no old tailscaled state found: a new node)")
    steps.append(f"tsproxy status {name}")
    lines.append("to move to tsproxy, run:")
    lines += [f"  {number}. {step}" for number, step in enumerate(steps, 1)]
    if (plan.to_stop or plan.state_from) and not plan.instance_running:
        lines.append(f"({migrate_command} --stop{copy_options if plan.state_from else ''} "
                     "runs the steps before the start)")
    return "\n".join(lines)


def instance_unit(name: str) -> str:
    """tsproxy@NAME, as people type it."""
    return vocabulary.unit(vocabulary.INSTANCE, name, "")
