"""What tsproxy does with its connection to systemd (tsproxy/systemd.py), against a fake
manager (tests/fake_systemd.py): unit states, doctor --fix's jobs waited for, the watchdog's
restart queued and its sleeps cut short by unit changes, one line when systemd is away.
The booted system tier talks to a real systemd over D-Bus."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tsproxy import systemd, watch
from tsproxy.cli import doctor
from tsproxy.cli import main as tsproxy_main
from tsproxy.errors import TsproxyError
from tsproxy.network import Shape

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fake_systemd import FakeSystemd

pytestmark = pytest.mark.unit

INSTANCE = "tsproxy@fgpu.service"
FGPU_UNITS = [INSTANCE, "tsproxy-tailscaled@fgpu.service", "tsproxy-socks@fgpu.socket",
              "tsproxy-socks@fgpu.service"]


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeSystemd:
    states = tmp_path / "units.json"
    states.write_text(json.dumps({
        INSTANCE: {"ActiveState": "failed", "SubState": "failed", "Result": "exit-code"},
        "nope.service": {"LoadState": "not-found"}}))
    systemd_ = FakeSystemd(states)
    monkeypatch.setattr("tsproxy.systemd.connect", systemd_.connect)
    return systemd_


def test_show_answers_every_unit_over_one_connection(fake: FakeSystemd) -> None:
    states = systemd.show([INSTANCE, "nope.service", "multi-user.target"])
    assert states == {
        INSTANCE: {"Id": INSTANCE, "LoadState": "loaded", "ActiveState": "failed",
                   "SubState": "failed", "Result": "exit-code"},
        # Result is asked of failed units only: for the others it says nothing.
        "nope.service": {"Id": "nope.service", "LoadState": "not-found",
                         "ActiveState": "inactive", "SubState": "dead"},
        # A target has no Result: left out, as systemctl show leaves it out.
        "multi-user.target": {"Id": "multi-user.target", "LoadState": "loaded",
                              "ActiveState": "inactive", "SubState": "dead"}}
    assert (fake.connections, fake.closed) == (1, 1)
    assert systemd.show([INSTANCE], ("Id", "UnitFileState")) == {
        INSTANCE: {"Id": INSTANCE, "UnitFileState": "disabled"}}
    assert systemd.show([]) == {} and fake.connections == 2  # nothing asked: no connection


def test_unit_names_as_people_write_them() -> None:
    assert systemd.unit_name("tsproxy@fgpu") == INSTANCE
    assert systemd.unit_name("tsproxy-dns.socket") == "tsproxy-dns.socket"
    assert systemd.unit_name("tsproxy-dns.service") == "tsproxy-dns.service"


def test_doctor_fix_waits_for_each_job(fake: FakeSystemd) -> None:
    assert doctor.fix("systemctl restart tsproxy@fgpu") == []
    assert fake.jobs == [("restart", INSTANCE)]
    assert doctor.fix("systemctl restart tsproxy-dns.socket tsproxy-dns.service") == []
    assert fake.jobs[1:] == [("restart", "tsproxy-dns.socket"),
                             ("restart", "tsproxy-dns.service")]
    # Every queued job came back through JobRemoved before fix returned.
    assert set(fake.finished.values()) == {"done"} and len(fake.finished) == 3
    assert doctor.fix("systemctl daemon-reload") == [] and fake.reloads == 1


def test_doctor_fix_reports_a_failed_job_in_one_line(fake: FakeSystemd,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    fake.results = {"tsproxy-dns.socket": "failed", "tsproxy-dns.service": None}
    monkeypatch.setattr(doctor, "JOB_TIMEOUT", 0.2)
    assert doctor.fix("systemctl restart tsproxy-dns.socket tsproxy-dns.service") == [
        "tsproxy-dns.socket: job failed: see journalctl -u tsproxy-dns.socket",
        "tsproxy-dns.service: not done after 0.2 s (systemctl list-jobs)"]


def test_doctor_fix_runs_other_commands(fake: FakeSystemd) -> None:
    assert doctor.fix("true") == [] and doctor.fix("false") == ["exit 1"]
    assert fake.jobs == []


def test_watchdog_queues_its_restart(fake: FakeSystemd) -> None:
    assert watch.restart("fgpu") is True
    assert fake.jobs == [("restart", INSTANCE)] and fake.waits == []  # not waited for


def test_unit_changes_wake_the_watchdog(fake: FakeSystemd) -> None:
    made = Shape((4, 1), True, (("forward", 6),))
    looks = iter([made, made, made, Shape(None, True, made.table)])
    repaired: list[str] = []

    def probe(name: str) -> Shape:
        fake.signal()  # say tailscaled failed right after this look
        return next(looks)

    def repair(name: str) -> bool:
        repaired.append(name)
        return True

    watch.run("fgpu", 60.0, probe=probe, repair=repair)
    # Three waits of up to 60 s, each cut short by the change: four looks at once.
    assert repaired == ["fgpu"] and fake.waits == [60.0, 60.0, 60.0]
    assert fake.followed == FGPU_UNITS
    assert fake.closed == fake.connections == 1


def test_without_systemd_it_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    # Nothing listens where the private socket and the system bus are said to be.
    monkeypatch.setattr(systemd, "PRIVATE", str(tmp_path / "private"))
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={tmp_path}/system_bus_socket")
    away = (f"cannot reach systemd ({tmp_path}/private: No such file or directory; "
            "system bus: No such file or directory): tsproxy needs systemd")
    if systemd.os.geteuid() != 0:
        away = ("cannot reach systemd (system bus: No such file or directory): tsproxy "
                "needs systemd")
    with pytest.raises(TsproxyError) as error:
        systemd.show([INSTANCE])
    assert str(error.value) == away

    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/fgpu.conf").write_text("listen = 100.121.76.21:11080\n")
    monkeypatch.setenv("TSPROXY_CONF_DIR", str(tmp_path / "etc"))
    assert tsproxy_main(["status", "fgpu"]) == 1
    assert capsys.readouterr() == ("", f"tsproxy: {away}\n")

    assert doctor.fix("systemctl restart tsproxy@fgpu") == [away]
    assert watch.restart("fgpu") is False
    # The watchdog says so once and goes on looking on its own.
    waker = systemd.Waker(FGPU_UNITS, print)
    waker.wait(0.01)
    waker.wait(0.01)
    assert capsys.readouterr().out == f"{away}: looking every 0.01 s only\n"
