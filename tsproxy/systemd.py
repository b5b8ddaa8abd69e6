"""tsproxy's conversation with systemd at run time, over D-Bus with pystemd: unit states for
status, list, doctor and migrate; jobs queued (the watchdog's restart) or waited for (doctor
--fix); the watchdog woken when one of its instance's units changes.

Which bus: root talks to systemd's private socket, as systemctl does: no dbus-daemon in
between, and it answers while the system bus is down. Other users go through the system bus
(python3-pystemd depends on one), where reading unit states is open to everyone. Either way
one connection carries a whole command: `tsproxy status` asks for every unit of every
instance in one ListUnitsByNames call instead of forking systemctl.

`connect` is the one seam: the unit tests replace it with a fake manager
(tests/fake_systemd.py); the system tier talks to a real systemd.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from pystemd.dbusexc import (  # type: ignore[import-untyped]
    DBusBaseError,
    DBusUnknownPropertyError,
)
from pystemd.dbuslib import (  # type: ignore[import-untyped]
    DBus,
    DBusAddress,
    apply_signature,
    path_encode,
)

from .errors import TsproxyError

PROPERTIES = ("Id", "LoadState", "ActiveState", "SubState", "Result")
PRIVATE = "/run/systemd/private"
SYSTEMD = b"org.freedesktop.systemd1"
MANAGER_PATH = b"/org/freedesktop/systemd1"
MANAGER = b"org.freedesktop.systemd1.Manager"
PROPERTIES_IFACE = b"org.freedesktop.DBus.Properties"
UNIT_PREFIX = b"/org/freedesktop/systemd1/unit"
# ListUnitsByNames answers these for every unit; any other property is one Get per unit, on
# the Unit interface unless it belongs to the unit's type (Service, Socket, ...).
LISTED = ("Id", "LoadState", "ActiveState", "SubState")
ON_TYPE = frozenset({"Result"})
# Asked only of a failed unit: what a working one would answer ("success") says nothing, and
# each is one more call per unit.
WHEN_FAILED = frozenset({"Result"})
TYPES = ("service", "socket", "target", "timer", "mount", "automount", "swap", "path", "slice",
         "scope", "device")
VERBS = {"start": b"StartUnit", "restart": b"RestartUnit", "stop": b"StopUnit",
         "try-restart": b"TryRestartUnit", "reload-or-restart": b"ReloadOrRestartUnit"}


def systemctl() -> str:
    # migrate forks `systemctl disable --now`; tests point this at a fake.
    return os.environ.get("TSPROXY_SYSTEMCTL", "systemctl")


def unit_name(name: str) -> str:
    """A unit name as systemctl takes it from people: without a type, a service."""
    return name if name.rpartition(".")[2] in TYPES else f"{name}.service"


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _complaint(error: Exception) -> str:
    """systemd's own words when it gave some, else what the errno says (pystemd's message
    for a failed connect is only "Could not open a bus to DBus")."""
    message = _text(getattr(error, "err_message", "") or "")
    number = getattr(error, "errno", None)
    if (not message or message.startswith("Could not open a bus")) and \
            isinstance(number, int) and number < 0:
        return os.strerror(-number)
    return message or str(error)


class Manager:
    """systemd's manager over one pystemd connection; every failure is one TsproxyError."""

    def __init__(self, bus: Any, where: str) -> None:
        self._bus, self.where = bus, where
        self.finished: dict[str, str] = {}  # job path -> result, from JobRemoved
        self.events = 0  # signals seen that concern what this connection follows
        self._followed: set[str] = set()
        self._callbacks: list[Callable[..., None]] = []

    def close(self) -> None:
        self._bus.close()

    def _call(self, path: bytes, interface: bytes, method: bytes, signature: bytes,
              args: list[Any], what: str = "") -> Any:
        try:
            return self._bus.call_method(SYSTEMD, path, interface, method,
                                         apply_signature(signature, args) if args else []).body
        except DBusUnknownPropertyError:
            raise  # get() answers None for it
        except DBusBaseError as error:
            raise TsproxyError(f"systemd ({self.where}): {what or method.decode()}: "
                               f"{_complaint(error)}") from None

    def list_units(self, names: list[str]) -> list[tuple[str, str, str, str]]:
        """(Id, LoadState, ActiveState, SubState) of each name, in order; systemd loads a
        unit it did not know, so every name gets an answer (not-found, masked, ...)."""
        rows = self._call(MANAGER_PATH, MANAGER, b"ListUnitsByNames", b"as",
                          [[name.encode() for name in names]])
        return [(_text(r[0]), _text(r[2]), _text(r[3]), _text(r[4])) for r in rows]

    def socket_listens(self) -> list[tuple[str, str, str]]:
        """(unit, type, address) of every Listen entry of every loaded socket unit, as
        `systemctl list-sockets --all` shows them: ("x.socket", "Stream", "[::1]:53")."""
        rows = self._call(MANAGER_PATH, MANAGER, b"ListUnitsByPatterns", b"asas",
                          [[], [b"*.socket"]])
        found = []
        for row in rows:
            unit = _text(row[0])
            listens = self._call(row[6], PROPERTIES_IFACE, b"Get", b"ss",
                                 [b"org.freedesktop.systemd1.Socket", b"Listen"],
                                 f"{unit} Listen")
            found += [(unit, _text(kind), _text(address)) for kind, address in listens]
        return found

    def get(self, unit: str, prop: str) -> str | None:
        """One property of a unit, None when its type has no such property."""
        kind = unit.rpartition(".")[2].capitalize() if prop in ON_TYPE else "Unit"
        try:
            return _text(self._call(path_encode(UNIT_PREFIX, unit.encode()), PROPERTIES_IFACE,
                                    b"Get", b"ss", [f"org.freedesktop.systemd1.{kind}".encode(),
                                                    prop.encode()], f"{unit} {prop}"))
        except DBusUnknownPropertyError:
            return None

    def queue(self, verb: str, unit: str) -> str:
        """Queue a job (mode "replace", as systemctl's default) and return its path at once."""
        return _text(self._call(MANAGER_PATH, MANAGER, VERBS[verb], b"ss",
                                [unit.encode(), b"replace"], f"{verb} {unit}"))

    def signal(self, unit: str, number: int) -> None:
        """Send a signal to the unit's main process at once (KillUnit: no job, so it works
        from inside another unit's job, where a job of a unit ordered after it would wait)."""
        self._call(MANAGER_PATH, MANAGER, b"KillUnit", b"ssi", [unit.encode(), b"main", number],
                   f"signal {unit}")

    def reload(self) -> None:
        """`systemctl daemon-reload`: systemd answers once the generators ran and the units
        are reloaded."""
        self._call(MANAGER_PATH, MANAGER, b"Reload", b"", [])

    def follow(self, units: list[str]) -> None:
        """Listen for JobRemoved (every job's result lands in `finished`) and for state
        changes of `units`; each change, and each end of a job of theirs, counts in `events`
        (with no units, each end of any job). Call it before queueing a job, so a quick
        job's end cannot pass unseen."""
        self._followed.update(units)

        # pystemd wants plain functions (it sets an attribute on them) and keeps no
        # reference: these live as long as the connection, in _callbacks.
        def job_removed(message: Any, error: Any = None, userdata: Any = None) -> None:
            message.process_reply(False)
            _, job, unit, result = message.body
            self.finished[_text(job)] = _text(result)
            if not self._followed or _text(unit) in self._followed:
                self.events += 1

        def changed(message: Any, error: Any = None, userdata: Any = None) -> None:
            self.events += 1

        self._callbacks += [job_removed, changed]
        try:
            self._bus.match_signal(SYSTEMD, MANAGER_PATH, MANAGER, b"JobRemoved", job_removed)
            for unit in units:
                self._bus.match_signal(SYSTEMD, path_encode(UNIT_PREFIX, unit.encode()),
                                       PROPERTIES_IFACE, b"PropertiesChanged", changed)
        except DBusBaseError as error:
            raise TsproxyError(f"systemd ({self.where}): cannot listen for its signals: "
                               f"{_complaint(error)}") from None
        # On the system bus systemd sends unit and job signals only while someone has
        # subscribed; the private socket gets them anyway, and Subscribe does no harm there.
        self._call(MANAGER_PATH, MANAGER, b"Subscribe", b"", [])

    def wait(self, seconds: float) -> None:
        """Wait until a followed unit changes or a job ends, at most `seconds`."""
        deadline = time.monotonic() + seconds
        seen = self.events
        try:
            while True:
                self._dispatch()
                left = deadline - time.monotonic()
                if self.events != seen or left <= 0:
                    return
                self._bus.wait(int(left * 1e6) + 1)
        except DBusBaseError as error:
            raise TsproxyError(f"systemd ({self.where}): {_complaint(error)}") from None

    def _dispatch(self) -> None:
        # sd_bus_process handles one message a call: go on while a call still found one
        # (a callback ran or an unmatched message came back).
        while True:
            seen = self.events
            if self._bus.process().is_empty() and self.events == seen:
                return


def connect() -> Manager:
    """A connection to systemd: root through its private socket, as systemctl does (the
    system bus when that fails), other users through the system bus."""
    tried = []
    if os.geteuid() == 0:
        bus = DBusAddress(f"unix:path={PRIVATE}".encode(), True)
        try:
            bus.open()
            return Manager(bus, PRIVATE)
        except DBusBaseError as error:
            tried.append(f"{PRIVATE}: {_complaint(error)}")
    bus = DBus()
    try:
        bus.open()
        return Manager(bus, "system bus")
    except DBusBaseError as error:
        tried.append(f"system bus: {_complaint(error)}")
    raise TsproxyError(f"cannot reach systemd ({'; '.join(tried)}): tsproxy needs systemd")


@contextmanager
def manager() -> Iterator[Manager]:
    connection = connect()
    try:
        yield connection
    finally:
        connection.close()


def show(units: list[str], properties: tuple[str, ...] = PROPERTIES) -> dict[str, dict[str, str]]:
    """`properties` of each unit, by unit name, over one connection. A unit systemd does not
    know still gets an answer (LoadState=not-found, ActiveState=inactive), so every name is a
    key; a property the unit's type lacks is left out, as systemctl show leaves it out, and
    so is the Result of a unit that has not failed."""
    if not units:
        return {}
    with manager() as systemd:
        states = {}
        # In the order asked: an alias is answered under the unit's own name (its Id).
        for unit, row in zip(units, systemd.list_units(units), strict=True):
            values = dict(zip(LISTED, row, strict=True))
            for prop in properties:
                if prop in values or (prop in WHEN_FAILED and values["ActiveState"] != "failed"):
                    continue
                if (value := systemd.get(unit, prop)) is not None:
                    values[prop] = value
            states[unit] = {prop: values[prop] for prop in properties if prop in values}
    return states


def socket_listens() -> list[tuple[str, str, str]]:
    with manager() as systemd:
        return systemd.socket_listens()


def signal(units: list[str], number: int) -> None:
    with manager() as systemd:
        for unit in units:
            systemd.signal(unit, number)


def reload() -> None:
    """`systemctl daemon-reload`, waited for."""
    with manager() as systemd:
        systemd.reload()


def run_jobs(jobs: list[tuple[str, str]], timeout: float) -> list[str]:
    """Queue each (verb, unit) job and wait until systemd has finished them all, at most
    `timeout` seconds: one line for each job that did not end "done"."""
    with manager() as systemd:
        systemd.follow([])
        queued = [(systemd.queue(verb, unit), unit) for verb, unit in jobs]
        deadline = time.monotonic() + timeout
        while any(job not in systemd.finished for job, _ in queued) and \
                (left := deadline - time.monotonic()) > 0:
            systemd.wait(left)
        failed = []
        for job, unit in queued:
            result = systemd.finished.get(job)
            if result is None:
                failed.append(f"{unit}: not done after {timeout:g} s (systemctl list-jobs)")
            elif result != "done":
                failed.append(f"{unit}: job {result}: see journalctl -u {unit}")
        return failed


class Waker:
    """Sleeps that systemd cuts short: `wait(seconds)` returns early when one of `units`
    changes state or ends a job. Without systemd (unreachable, or the connection lost when
    systemd re-executes itself) it sleeps the whole time, and connects again at the next
    wait: the caller's own looks go on either way."""

    def __init__(self, units: list[str], log: Callable[[str], None]) -> None:
        self.units, self.log = units, log
        self._systemd: Manager | None = None
        self._lost: str | None = None  # said once, until connected again

    def wait(self, seconds: float) -> None:
        try:
            if self._systemd is None:
                self._systemd = connect()
                self._systemd.follow(self.units)
                if self._lost is not None:
                    self.log(f"systemd answers again ({self._systemd.where})")
                self._lost = None
            self._systemd.wait(seconds)
        except TsproxyError as error:
            self.close()
            if self._lost is None:
                self.log(f"{error}: looking every {seconds:g} s only")
            self._lost = str(error)
            time.sleep(seconds)

    def close(self) -> None:
        if self._systemd is not None:
            self._systemd.close()
            self._systemd = None
