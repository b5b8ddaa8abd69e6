"""Moving one tailnet from a hand-made setup to tsproxy: which old units to stop, who holds
the ports tsproxy needs, where the old tailscaled kept its node (copied over, the node keeps
its key and its 100.x address), and whether the clients' setup stays as it is.

`plan` only reads; `check_ready`, `stop` and `copy_state` act, each refusing with one line
before anything changed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field

from tsproxy_generator import vocabulary
from tsproxy_generator.model import Listen, TailnetConf

from . import command, holders, oldsetup, systemd
from .errors import TsproxyError
from .holders import Held, Holder
from .instances import state_dir
from .netns import NETNS_RUN_DIR
from .oldsetup import UnitFile

STATE_FILE = "tailscaled.state"
COMMAND_TIMEOUT = 120


@dataclass(frozen=True)
class OldUnit:
    name: str
    why: str  # what makes it part of the old setup, for people
    active: bool
    enabled: bool

    @property
    def state(self) -> str:
        return f"{'enabled' if self.enabled else 'disabled'}, " \
               f"{'active' if self.active else 'inactive'}"


@dataclass
class Plan:
    conf: TailnetConf
    netns: str | None  # the old namespace
    units: list[OldUnit] = field(default_factory=list)
    held: list[Held] = field(default_factory=list)
    state_from: str | None = None  # the old tailscaled's state dir (or file)
    state_unit: str | None = None  # the unit it was found in; None: given
    old_listen: Listen | None = None  # where the old proxy listened (socat)
    instance_running: bool = False  # tsproxy's own tailscaled for this tailnet
    has_state: bool = False  # tsproxy's tailscaled made a node of its own already

    @property
    def to_stop(self) -> list[str]:
        return [unit.name for unit in self.units if unit.active or unit.enabled]

    @property
    def strangers(self) -> list[Holder]:
        """Holders of the ports that are no unit this plan stops: a socat run from a shell."""
        stopping = set(self.to_stop)
        return [h for held in self.held for h in held.by if h.unit not in stopping]

    @property
    def listen_problem(self) -> str | None:
        """Clients (the Mac's PAC file, resolver file, ssh config) keep working only when
        tsproxy listens where the old proxy did."""
        old, new = self.old_listen, self.conf.listen
        if old is None or old == new or (old.address.is_unspecified and old.port == new.port):
            return None
        keep = Listen(new.address, old.port) if old.address.is_unspecified else old
        return (f"{self.conf.path}: listen: {new} is not where the old proxy listened ({old}): "
                f"the Mac's PAC file, resolver file and ssh config would change; to keep them, "
                f"set listen = {keep}")


def plan(conf: TailnetConf, from_netns: str | None = None,
         state_from: str | None = None) -> Plan:
    """What the old setup of `conf`'s tailnet is. Raises TsproxyError for a namespace or a
    state that does not exist."""
    files = oldsetup.read_units()
    netns = choose_namespace(conf, files, from_netns)
    held = held_ports(conf)
    held_by = {h.unit: str(item.listen) for item in held for h in item.by if h.unit}
    result = Plan(conf, netns, held=held)
    whys = {}
    for unit in files:
        if why := why_old(unit, conf, netns, held_by):
            whys[unit.name] = why
            result.old_listen = result.old_listen or oldsetup.socat_listen(unit)
            if oldsetup.second_tailscaled(unit) and result.state_unit is None:
                result.state_from = oldsetup.tailscaled_state(unit)
                result.state_unit = unit.name if result.state_from else None
    for unit_name, listen in held_by.items():  # a holder whose unit file lives elsewhere
        if unit_name.endswith((".service", ".socket")):
            whys.setdefault(unit_name, f"holds {listen}")
    # Holders first: they block tsproxy's sockets.
    names = sorted(whys, key=lambda name: (name not in held_by, name))
    mine = vocabulary.unit(vocabulary.TAILSCALED, conf.name)
    states = systemd.show([*names, mine], ("Id", "LoadState", "ActiveState", "UnitFileState"))
    result.instance_running = states[mine].get("ActiveState") in ("active", "activating")
    result.has_state = os.path.exists(os.path.join(state_dir(conf.name), STATE_FILE))
    result.units = [OldUnit(name, whys[name],
                            states[name].get("ActiveState") in ("active", "activating"),
                            states[name].get("UnitFileState") == "enabled") for name in names]
    if state_from is not None:
        result.state_from, result.state_unit = checked_source(state_from), None
    return result


def choose_namespace(conf: TailnetConf, units: list[UnitFile], given: str | None) -> str | None:
    named = oldsetup.namespaces_of(units)
    existing = set(os.listdir(netns_dir())) if os.path.isdir(netns_dir()) else set()
    if given is not None:
        if given not in named and given not in existing:
            raise TsproxyError(f"--from-netns: namespace {given} does not exist (not in "
                               f"{netns_dir()}, named by no unit in "
                               f"{', '.join(oldsetup.unit_dirs())})")
        return given
    if len(named) <= 1:
        return next(iter(named), None)
    # Several hand-made tailnets: the one whose namespace carries this tailnet's name.
    mine = [ns for ns in named if conf.name.lower() in ns.lower()]
    if len(mine) == 1:
        return mine[0]
    raise TsproxyError(f"the old units use several namespaces ({', '.join(sorted(named))}): "
                       f"say which was {conf.name}'s with --from-netns NS")


def netns_dir() -> str:
    # Tests point this at a temporary directory; installed systems never set it.
    return os.environ.get("TSPROXY_NETNS_DIR", NETNS_RUN_DIR)


def why_old(unit: UnitFile, conf: TailnetConf, netns: str | None,
            held_by: dict[str, str]) -> str | None:
    programs = [p for p in unit.programs if p in oldsetup.PROGRAMS]
    does = f"runs {', '.join(programs or unit.programs[:1] or ['nothing'])}"
    if unit.name in held_by:
        return f"{does}, holds {held_by[unit.name]}"
    if netns and netns in unit.namespaces:
        if "tailscaled" in programs and (state := oldsetup.tailscaled_state(unit)):
            return f"{does} in {netns}, state {state}"
        return f"{does} in {netns}" if programs else f"makes or enters namespace {netns}"
    listen = oldsetup.socat_listen(unit)
    if listen and listen.port == conf.listen.port:
        return f"{does}, listens on {listen}"
    named = any(unit.mentions(word) for word in {netns, conf.name, conf.suffix} if word)
    if programs and named and ("tailscaled" not in programs or oldsetup.second_tailscaled(unit)):
        return does
    return None


def held_ports(conf: TailnetConf) -> list[Held]:
    """Who holds the proxy's TCP port and the DNS responder's UDP and TCP ports, but
    tsproxy itself."""
    wanted = [(conf.listen, "tcp")]
    if conf.dns_listen:
        wanted += [(conf.dns_listen, "udp"), (conf.dns_listen, "tcp")]
    return [found for listen, protocol in wanted
            if (found := holders.held(listen, (protocol,))) is not None]


def checked_source(path: str) -> str:
    if not os.path.exists(path):
        raise TsproxyError(f"--state-from: {path} does not exist")
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, STATE_FILE)):
        raise TsproxyError(f"--state-from: {path} has no {STATE_FILE}: not a tailscaled "
                           "--statedir")
    return path


def tailscaleds_on(path: str) -> list[Holder]:
    """tailscaled processes whose --statedir or --state is `path` (or inside it)."""
    wanted = os.path.realpath(path)
    found = []
    for entry in os.scandir(holders.proc()):
        if not entry.name.isdigit():
            continue
        try:
            with open(os.path.join(entry.path, "cmdline"), "rb") as file:
                argv = tuple(arg.decode(errors="replace")
                             for arg in file.read().split(b"\0") if arg)
        except OSError:
            continue
        if not argv or os.path.basename(argv[0]) != "tailscaled":
            continue
        for state in (oldsetup.option(argv, "statedir"), oldsetup.option(argv, "state")):
            if state and os.path.isabs(state):
                real = os.path.realpath(state)
                if real == wanted or real.startswith(wanted + "/") or wanted.startswith(real + "/"):
                    found.append(holders.holder(int(entry.name)))
                    break
    return found


def check_ready(plan: Plan, stop: bool, copy: bool, force: bool) -> None:
    """Refuse, before anything changed, what `stop` and `copy_state` could not finish."""
    stopping = set(plan.to_stop) if stop else set()
    if stop and (strangers := [h for h in plan.strangers if h.unit not in stopping]):
        raise TsproxyError(f"{strangers[0]} holds a port of {plan.conf.name} and is no unit of "
                           "the old setup: stop it yourself")
    if not copy:
        return
    assert plan.state_from is not None
    live = [h for h in tailscaleds_on(plan.state_from) if h.unit not in stopping]
    if live:
        hint = f"systemctl disable --now {live[0].unit}" if live[0].unit else "stop it"
        raise TsproxyError(f"tailscaled {str(live[0]).removeprefix('tailscaled ')} still runs on "
                           f"{plan.state_from}: copying a live state would make two nodes with "
                           f"one key; {hint} (or add --stop)")
    if plan.instance_running:
        name = plan.conf.name
        raise TsproxyError(f"{vocabulary.unit(vocabulary.TAILSCALED, name)} runs on "
                           f"{state_dir(name)}: "
                           f"systemctl stop {vocabulary.unit(vocabulary.INSTANCE, name, '')} first")
    if plan.has_state and not force:
        raise TsproxyError(f"{state_dir(plan.conf.name)} already holds a node of its own "
                           f"({STATE_FILE}): --force replaces it (the old one is kept aside)")


def stop(plan: Plan) -> None:
    """Stop and disable the old units, then delete the old namespace (its veth goes with it)."""
    if plan.to_stop:
        run([systemd.systemctl(), "disable", "--now", *plan.to_stop])
    if plan.netns and os.path.exists(os.path.join(netns_dir(), plan.netns)):
        run(["ip", "netns", "del", plan.netns])
    if still := held_ports(plan.conf):
        raise TsproxyError(f"{still[0]} after stopping the old units")


def run(argv: list[str]) -> None:
    print(f"running: {' '.join(argv)}", flush=True)
    # Stopping the old tailscaled may take a while: more than ip's and nft's usual 10 s.
    command.run(argv, timeout=COMMAND_TIMEOUT)


def copy_state(source: str, name: str) -> str | None:
    """Copy the old tailscaled's state in as the instance's (a --statedir whole, or a --state
    file as tailscaled.state): directory 0700, state file 0600. An existing state dir is
    renamed aside, never deleted; returns where it went."""
    dest = state_dir(name)
    parent = os.path.dirname(dest)
    os.makedirs(parent, mode=0o755, exist_ok=True)
    # Built beside the destination and renamed into place: never half a state.
    building = tempfile.mkdtemp(prefix=f".{name}.migrating-", dir=parent)
    try:
        if os.path.isdir(source):
            shutil.copytree(source, building, symlinks=True, dirs_exist_ok=True)
        else:
            shutil.copy2(source, os.path.join(building, STATE_FILE))
        os.chmod(building, 0o700)
        os.chmod(os.path.join(building, STATE_FILE), 0o600)
        aside = None
        if os.path.lexists(dest):
            aside = f"{dest}.before-migrate-{time.strftime('%Y%m%dT%H%M%S')}"
            os.rename(dest, aside)
        try:
            os.rename(building, dest)
        except OSError:
            if aside:
                os.rename(aside, dest)  # as it was
            raise
    except OSError as error:
        shutil.rmtree(building, ignore_errors=True)
        raise TsproxyError(f"copying {source} to {dest}: {error.strerror or error}") from None
    return aside
