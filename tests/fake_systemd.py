"""A fake systemd for unit tests: stands in for tsproxy.systemd.Manager, the one connection
tsproxy holds to systemd (tests swap it in for tsproxy.systemd.connect).

Unit states come from a JSON file ({"unit": {"ActiveState": ..., ...}}, read at each call,
so a test changes the world by rewriting it); a unit not in it is loaded and inactive, as an
instance of a shipped template that never started. Jobs are recorded and end with the result
the test set for their unit ("done" unless told), announced at the next wait; signals a test
queues with `signal()` wake the next wait early, as systemd's would."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tsproxy.systemd import LISTED, VERBS

DEFAULTS = {"LoadState": "loaded", "ActiveState": "inactive", "SubState": "dead",
            "Result": "success", "UnitFileState": "disabled"}
ON_UNIT = {"Id", "LoadState", "ActiveState", "SubState", "UnitFileState"}


class FakeSystemd:
    where = "fake"

    def __init__(self, states: Path, results: dict[str, str | None] | None = None) -> None:
        self.states = states
        self.results = results or {}  # unit -> job result; None: the job never ends
        self.jobs: list[tuple[str, str]] = []  # (verb, unit), in the order queued
        self.reloads = 0
        self.followed: list[str] = []
        self.finished: dict[str, str] = {}
        self.events = 0
        self.waits: list[float] = []
        self.connections = 0
        self.closed = 0
        self._pending: list[tuple[str, str] | None] = []  # (job, result), None: a change

    def connect(self) -> FakeSystemd:
        self.connections += 1
        return self

    def close(self) -> None:
        self.closed += 1

    def _unit(self, unit: str) -> dict[str, str]:
        table = json.loads(self.states.read_text()) if self.states.exists() else {}
        return {"Id": unit, **DEFAULTS, **table.get(unit, {})}

    def list_units(self, names: list[str]) -> list[tuple[str, str, str, str]]:
        rows = [self._unit(name) for name in names]
        return [(row[LISTED[0]], row[LISTED[1]], row[LISTED[2]], row[LISTED[3]]) for row in rows]

    def get(self, unit: str, prop: str) -> str | None:
        # Result belongs to services and sockets; a target has none, as in systemd.
        if prop == "Result" and unit.endswith(".target"):
            return None
        return self._unit(unit).get(prop)

    def socket_listens(self) -> list[tuple[str, str, str]]:
        """Every unit's "Listen" of the states file: [[TYPE, ADDRESS], ...]."""
        table = json.loads(self.states.read_text()) if self.states.exists() else {}
        return [(unit, kind, address) for unit, state in table.items()
                for kind, address in state.get("Listen", [])]

    def queue(self, verb: str, unit: str) -> str:
        assert verb in VERBS and "." in unit, (verb, unit)
        self.jobs.append((verb, unit))
        job = f"/org/freedesktop/systemd1/job/{len(self.jobs)}"
        result = self.results.get(unit, "done")
        if result is not None:
            self._pending.append((job, result))
        return job

    def reload(self) -> None:
        self.reloads += 1

    def follow(self, units: list[str]) -> None:
        self.followed += units

    def signal(self) -> None:
        """A followed unit changed state."""
        self._pending.append(None)

    def wait(self, seconds: float) -> None:
        self.waits.append(seconds)
        if not self._pending:
            time.sleep(seconds)
        for item in self._pending:
            if item is not None:
                self.finished[item[0]] = item[1]
            self.events += 1
        self._pending.clear()
