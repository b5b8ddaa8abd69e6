"""`tsproxy status`, `list` and `logout` against a fake systemd (tests/fake_systemd.py),
fake tailscaleds (tests/fake_localapi.py) and counters files: output compared with golden
files in tests/unit/status/ (`--update-goldens` rewrites them; review the diff)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tsproxy.cli import main
from tsproxy.network import Shape

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fake_localapi import FakeLocalAPI, make_node, make_status
from fake_systemd import FakeSystemd

pytestmark = pytest.mark.unit

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "status"

CONFS = {
    "fgpu.conf": "listen = 100.121.76.21:11080\n",
    "work.conf": "listen = 100.121.76.21:11081\ndns_listen = no\n",
    "lab.conf": "listen = 100.121.76.21:11082\nautostart = no\n",
    "broken.conf": "listen = 100.121.76.21:11083\nport = 1\n",
}
ACTIVE = {"ActiveState": "active", "SubState": "running"}
UNITS = {
    **{f"{u}@{n}.{t}": ACTIVE for n in ("fgpu", "work") for u, t in (
        ("tsproxy", "service"), ("tsproxy-tailscaled", "service"), ("tsproxy-socks", "socket"),
        ("tsproxy-watch", "service"))},
    "tsproxy@fgpu.service": {"ActiveState": "active", "SubState": "exited"},
    "tsproxy-socks@fgpu.service": ACTIVE,
    "tsproxy-dns.socket": {"ActiveState": "active", "SubState": "listening"},
    "tsproxy-dns.service": ACTIVE,
}


def fgpu_status() -> dict[str, object]:
    peers = [make_node("web", ["100.64.0.7"]), make_node("gpu", ["100.64.0.8"]),
             make_node("old", ["100.64.0.9"])]
    peers[2]["Online"] = False
    status = make_status("tsproxy-fgpu", ["100.64.0.2", "fd7a:115c:a1e0::2"], peers=peers)
    status["Self"]["KeyExpiry"] = "2027-02-23T10:00:00Z"
    status["CurrentTailnet"] = {"Name": "fgpu.example", "MagicDNSSuffix": "tail0000.ts.net"}
    status["Health"] = []
    return status


def work_status() -> dict[str, object]:
    status = make_status("tsproxy-work", [], state="NeedsLogin")
    status["Health"] = ["Tailscale is stopped."]
    return status


NETWORK: dict[str, Shape] = {}


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Four confs (one bad), two tailscaleds answering, fgpu's proxy counters, and a
    systemd where fgpu and work run and lab was never started."""
    (tmp_path / "etc").mkdir()
    for name, text in CONFS.items():
        (tmp_path / "etc" / name).write_text(text)
    (tmp_path / "stats/fgpu").mkdir(parents=True)
    (tmp_path / "stats/fgpu/stats.json").write_text(json.dumps(
        {"name": "fgpu", "active": 2, "tunnels": 1, "total": 10, "bytes_up": 1234,
         "bytes_down": 5678901}))
    (tmp_path / "units.json").write_text(json.dumps(UNITS))
    for name in ("fgpu", "work", "lab"):
        (tmp_path / "run" / name).mkdir(parents=True)
    for key, value in {"TSPROXY_CONF_DIR": tmp_path / "etc", "TSPROXY_RUN_DIR": tmp_path / "run",
                       "TSPROXY_STATS_DIR": tmp_path / "stats",
                       "TSPROXY_TAILSCALED": "/bin/true"}.items():
        monkeypatch.setenv(key, str(value))
    monkeypatch.setattr("tsproxy.systemd.connect", FakeSystemd(tmp_path / "units.json").connect)
    monkeypatch.delenv("NO_COLOR", raising=False)
    # The namespaces, veths and nft tables of the running instances, as the watchdog sees
    # them; a test takes pieces away through NETWORK.
    NETWORK.clear()
    NETWORK.update({name: Shape((4, n), True, (("forward", 6), ("input", 2)))
                    for n, name in enumerate(("fgpu", "work"))})
    monkeypatch.setattr("tsproxy.status.network.look", lambda name, with_table: NETWORK.get(
        name, Shape(None, False, None)))
    monkeypatch.setattr("tsproxy.status.can_read_nft", lambda: True)
    with FakeLocalAPI(tmp_path / "run/fgpu/tailscaled.sock", status=fgpu_status()), \
            FakeLocalAPI(tmp_path / "run/work/tailscaled.sock", status=work_status()):
        yield tmp_path


def tsproxy(world: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out.replace(str(world), "TMP"), err.replace(str(world), "TMP")


def check_golden(name: str, text: str, update: bool) -> None:
    path = GOLDEN / name
    if update:
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(text)
    assert text == path.read_text()


def test_status_table(world: Path, capsys: pytest.CaptureFixture[str], update_goldens: bool) -> None:
    code, out, err = tsproxy(world, capsys, "status")
    assert code == 3 and err == ""  # work needs a login, lab is stopped, broken is bad
    check_golden("status.txt", out, update_goldens)
    assert "\033[" not in out  # not a terminal: no colour


def test_status_json(world: Path, capsys: pytest.CaptureFixture[str], update_goldens: bool) -> None:
    code, out, _ = tsproxy(world, capsys, "status", "--json")
    assert code == 3
    statuses = json.loads(out)
    assert [(s["name"], s["healthy"]) for s in statuses] == [
        ("broken", False), ("fgpu", True), ("lab", False), ("work", False)]
    check_golden("status.json", out, update_goldens)


def test_status_of_healthy_instances_exits_0(world: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = tsproxy(world, capsys, "status", "fgpu")
    assert code == 0
    assert [line.split()[:2] for line in out.splitlines()] == [["NAME", "HEALTH"], ["fgpu", "ok"]]


def test_status_says_what_is_wrong(world: Path, capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Each failure in turn, as the PROBLEM the one unhealthy row shows."""
    def problem() -> str:
        code, out, _ = tsproxy(world, capsys, "status", "--json", "fgpu")
        assert code == 3
        return str(json.loads(out)[0]["problem"])

    units = dict(UNITS)

    def set_unit(unit: str, state: dict[str, str]) -> None:
        units[unit] = state
        (world / "units.json").write_text(json.dumps(units))

    set_unit("tsproxy-tailscaled@fgpu.service", {"ActiveState": "activating",
                                                  "SubState": "auto-restart"})
    assert problem() == ("tsproxy-tailscaled@fgpu.service is activating (auto-restart): "
                         "systemctl restart tsproxy@fgpu")
    set_unit("tsproxy-tailscaled@fgpu.service", ACTIVE)
    set_unit("tsproxy-dns.socket", {"ActiveState": "failed", "SubState": "failed"})
    assert problem() == ("tsproxy-dns.socket is failed: systemctl restart tsproxy-dns.socket "
                         "tsproxy-dns.service")
    set_unit("tsproxy-dns.socket", ACTIVE)
    set_unit("tsproxy@fgpu.service", {"ActiveState": "failed", "SubState": "failed",
                                      "Result": "exit-code"})
    assert problem() == ("tsproxy@fgpu.service failed (exit-code): systemctl restart "
                         "tsproxy@fgpu (see journalctl -u tsproxy@fgpu.service)")
    set_unit("tsproxy@fgpu.service", ACTIVE)
    NETWORK["fgpu"] = Shape(None, True, (("forward", 0), ("input", 0)))  # netns del, nft flush
    # The first piece gone is the one shown; doctor lists each (the watchdog logs each).
    assert problem() == ("network namespace ts-fgpu is gone: systemctl restart tsproxy@fgpu "
                         "(tsproxy-watch@fgpu does it within seconds)")
    NETWORK["fgpu"] = Shape((4, 0), True, (("forward", 0), ("input", 0)))  # nft flush
    assert problem().startswith("nft table inet tsproxy-fgpu was flushed: systemctl restart")
    NETWORK["fgpu"] = Shape((4, 0), False, None)  # ip link del, nft delete table
    assert problem().startswith("veth ts-fgpu is gone: systemctl restart tsproxy@fgpu")
    # `nft flush ruleset` on a host where tsproxy turned forwarding on: its guard goes too.
    NETWORK["fgpu"] = Shape((4, 0), True, None, guard_due=True)
    assert problem().startswith("nft table inet tsproxy-fgpu is gone: systemctl restart")
    NETWORK["fgpu"] = Shape((4, 0), True, (("forward", 6), ("input", 2)), guard_due=True)
    assert problem().startswith("nft table ip tsproxy-forward-guard is gone: systemctl restart")
    NETWORK["fgpu"] = Shape((4, 0), True, (("forward", 6), ("input", 2)), guard_due=True,
                            guard=(("forward", 3),))
    code, out, _ = tsproxy(world, capsys, "status", "--json", "fgpu")
    assert code == 0 and json.loads(out)[0]["forwarding_guard"] is True
    NETWORK["fgpu"] = Shape((4, 0), True, (("forward", 6), ("input", 2)))
    os.unlink(world / "run/fgpu/tailscaled.sock")  # tailscaled gone, systemd not told yet
    assert problem() == ("TMP/run/fgpu/tailscaled.sock: tailscaled is not running (no socket): "
                         "systemctl restart tsproxy@fgpu")
    monkeypatch.setenv("TSPROXY_TAILSCALED", str(world / "no-such-tailscaled"))
    assert problem() == "TMP/no-such-tailscaled not found: apt install tailscale"


def test_status_colour_on_a_terminal(world: Path, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    _, out, _ = tsproxy(world, capsys, "status")
    assert "\033[32mok" in out and "\033[31mUNHEALTHY" in out
    monkeypatch.setenv("NO_COLOR", "1")
    _, out, _ = tsproxy(world, capsys, "status")
    assert "\033[" not in out


def test_status_of_an_unknown_instance(world: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = tsproxy(world, capsys, "status", "fgpu", "nope")
    assert (code, out) == (1, "")
    assert err == "tsproxy: no instance 'nope': TMP/etc/nope.conf does not exist\n"


def test_list(world: Path, capsys: pytest.CaptureFixture[str], update_goldens: bool,
              monkeypatch: pytest.MonkeyPatch) -> None:
    generated = world / "generator"
    monkeypatch.setenv("TSPROXY_GENERATOR_DIR", str(generated))
    for name in ("fgpu", "work", "lab"):
        drop_in = generated / f"tsproxy@{name}.service.d/50-tsproxy.conf"
        drop_in.parent.mkdir(parents=True)
        drop_in.write_text("[Unit]\n")
    (generated / "multi-user.target.wants").mkdir()
    for name in ("fgpu", "work"):
        (generated / f"multi-user.target.wants/tsproxy@{name}.service").symlink_to(
            "/usr/lib/systemd/system/tsproxy@.service")
    # work.conf changed after the last daemon-reload.
    later = os.stat(generated / "tsproxy@work.service.d/50-tsproxy.conf").st_mtime + 5
    os.utime(world / "etc/work.conf", (later, later))
    code, out, err = tsproxy(world, capsys, "list")
    assert code == 0 and err == ""
    check_golden("list.txt", out, update_goldens)
    code, out, _ = tsproxy(world, capsys, "list", "--json")
    rows = {row["name"]: row for row in json.loads(out)}
    assert {n: (r["generated"], r["autostart"], r["state"]) for n, r in rows.items()} == {
        "broken": ("no", False, "inactive"), "fgpu": ("yes", True, "active"),
        "lab": ("yes", False, "inactive"), "work": ("stale", True, "active")}


def test_logout(world: Path, capsys: pytest.CaptureFixture[str],
                monkeypatch: pytest.MonkeyPatch) -> None:
    fake = world / "tailscale"
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {world}/tailscale.log\n"
                    "[ \"$2\" = logout ] || exit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("TSPROXY_TAILSCALE", str(fake))
    code, out, err = tsproxy(world, capsys, "logout", "nope")
    assert (code, err) == (1, "tsproxy: no instance 'nope': TMP/etc/nope.conf does not exist\n")
    code, out, err = tsproxy(world, capsys, "logout", "lab")  # its tailscaled is not running
    assert (code, err) == (1, "tsproxy: lab: tailscaled is not running (TMP/run/lab/"
                              "tailscaled.sock is missing); start it with: systemctl start "
                              "tsproxy@lab\n")
    if os.geteuid() != 0:
        code, out, err = tsproxy(world, capsys, "logout", "fgpu")
        assert (code, err) == (1, "tsproxy: tsproxy logout must run as root: only root may "
                                  "change tailscaled's login\n")
        return
    code, out, err = tsproxy(world, capsys, "logout", "fgpu")
    assert (code, err) == (0, "")
    assert out == "fgpu: logged out; log in again with: tsproxy login fgpu\n"
    assert (world / "tailscale.log").read_text() == \
        f"--socket={world}/run/fgpu/tailscaled.sock logout\n"
    fake.write_text("#!/bin/sh\necho 'logout: not logged in' >&2\nexit 1\n")
    code, out, err = tsproxy(world, capsys, "logout", "fgpu")
    assert (code, err) == (1, "tsproxy: fgpu: tailscale logout failed: logout: not logged in\n")
