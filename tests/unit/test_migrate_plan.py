"""`tsproxy migrate` against a replica of the seed's hand-made setup (tests/seed.py) as unit
files, a fake /proc in which socat and the stand-in CoreDNS hold the ports and the old
tailscaled runs on its state, and a fake systemd: what it finds, the commands it prints,
what it refuses (one line, nothing changed) and the state it copies."""

from __future__ import annotations

import ipaddress
import json
import os
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tsproxy import migrate, oldsetup
from tsproxy.cli import main
from tsproxy.errors import TsproxyError
from tsproxy.instances import get_instance

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import seed
from fake_systemd import FakeSystemd

pytestmark = pytest.mark.unit

FAKE_SYSTEMCTL = Path(__file__).resolve().parents[1] / "fake_systemctl.py"
OLD_UNITS = ["ts-netns.service", "tailscaled-tsFGPU.service", "socks-tsFGPU.service",
             "expose-socks-tsFGPU.service", "coredns-fgpu.service"]
# Holders of the ports first, then by name.
TO_STOP = ["coredns-fgpu.service", "expose-socks-tsFGPU.service", "socks-tsFGPU.service",
           "tailscaled-tsFGPU.service", "ts-netns.service"]
# Neighbours that are no part of fgpu's old setup.
OTHERS = {
    # The host's own tailscaled, copied to /etc by someone.
    "tailscaled.service": "[Service]\nExecStart=/usr/sbin/tailscaled "
                          "--state=/var/lib/tailscale/tailscaled.state "
                          "--socket=/run/tailscale/tailscaled.sock --port=41641\n",
    "ssh-forward.service": "[Service]\nExecStart=/usr/bin/socat TCP-LISTEN:2222,fork "
                           "TCP:192.0.2.5:22\n",
    "socks-tsWORK.service": "[Service]\nExecStart=ip netns exec tsWORK /usr/bin/microsocks\n",
    "masked.service": None,
}


def hexed(address: str, port: int) -> str:
    """An endpoint as /proc/net/tcp shows it on a little-endian kernel."""
    raw = ipaddress.ip_address(address).packed
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return f"{words.hex().upper()}:{port:04X}"


@dataclass
class World:
    root: Path
    conf_dir: Path
    old_state: Path
    units: dict[str, dict[str, str]]

    def process(self, pid: int, argv: list[str], unit: str, inodes: tuple[int, ...] = ()) -> None:
        where = self.root / "proc" / str(pid)
        (where / "fd").mkdir(parents=True)
        (where / "comm").write_text(Path(argv[0]).name + "\n")
        (where / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
        (where / "cgroup").write_text(f"0::/system.slice/{unit}\n")
        for number, inode in enumerate(inodes, 3):
            (where / "fd" / str(number)).symlink_to(f"socket:[{inode}]")

    def socket(self, table: str, address: str, port: int, inode: int) -> None:
        state = "0A" if table.startswith("tcp") else "07"
        with (self.root / "proc/net" / table).open("a") as file:
            file.write(f"   0: {hexed(address, port)} 00000000:0000 {state} 00000000:00000000 "
                       f"00:00000000 00000000     0        0 {inode} 1 0000000000000000\n")

    def systemd(self, **states: dict[str, str]) -> None:
        self.units.update(states)
        (self.root / "units.json").write_text(json.dumps(self.units))


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    if sys.byteorder != "little":
        pytest.skip("the fake /proc/net tables are a little-endian kernel's")
    old_state = tmp_path / "var/lib/tailscale-tsFGPU"
    old_state.mkdir(parents=True, mode=0o755)
    (old_state / "tailscaled.state").write_text('{"_machinekey": "bWtleQ=="}')
    (old_state / "tailscaled.state").chmod(0o600)
    (old_state / "derpmap.cached.json").write_text("{}")
    script = tmp_path / "setup-ts-netns.sh"
    script.write_text(seed.SETUP)
    units = tmp_path / "etc/systemd/system"
    units.mkdir(parents=True)
    for name, text in seed.files(str(script), state_flags=f"--statedir={old_state}").items():
        (units / name).write_text(text)
    for name, text in OTHERS.items():
        if text is None:
            (units / name).symlink_to("/dev/null")
        else:
            (units / name).write_text(text)
    (tmp_path / "netns").mkdir()
    (tmp_path / "netns/tsFGPU").touch()
    (tmp_path / "proc/net").mkdir(parents=True)
    for table in ("tcp", "tcp6", "udp", "udp6"):
        (tmp_path / "proc/net" / table).write_text("  sl  local_address rem_address   st ...\n")
    (tmp_path / "systemctl.log").touch()
    conf_dir = tmp_path / "etc/tsproxy.d"
    conf_dir.mkdir()
    (conf_dir / "fgpu.conf").write_text(f"listen = {seed.HOST_TS_IP}:11080\n")
    w = World(tmp_path, conf_dir, old_state, {})
    # The seed running: socat on the proxy port, CoreDNS on 53, tailscaled on its state.
    w.socket("tcp", seed.HOST_TS_IP, 11080, 5555)
    w.socket("udp", seed.HOST_TS_IP, 53, 5556)
    w.socket("tcp", "0.0.0.0", 53, 5557)
    w.socket("tcp", "127.0.0.1", 11080, 5558)  # another address: no holder of ours
    w.process(812, ["/usr/bin/socat", "TCP-LISTEN:11080,bind=100.121.76.21"],
              "expose-socks-tsFGPU.service", (5555,))
    w.process(813, [seed.COREDNS, "-conf", "/etc/coredns/Corefile"], "coredns-fgpu.service",
              (5556, 5557))
    w.process(814, ["/usr/sbin/tailscaled", f"--statedir={old_state}", f"--socket={seed.SOCKET}"],
              "tailscaled-tsFGPU.service")
    w.process(815, ["/usr/sbin/tailscaled", "--state=/var/lib/tailscale/tailscaled.state"],
              "tailscaled.service")
    w.systemd(**{unit: {"ActiveState": "active", "UnitFileState": "enabled"}
                 for unit in OLD_UNITS})
    for key, value in {"TSPROXY_CONF_DIR": conf_dir, "TSPROXY_UNIT_DIRS": units,
                       "TSPROXY_NETNS_DIR": tmp_path / "netns", "TSPROXY_PROC": tmp_path / "proc",
                       "TSPROXY_STATE_DIR": tmp_path / "var/lib/tsproxy",
                       "TSPROXY_SYSTEMCTL": FAKE_SYSTEMCTL,
                       "FAKE_SYSTEMCTL_LOG": tmp_path / "systemctl.log"}.items():
        monkeypatch.setenv(key, str(value))
    monkeypatch.setattr("tsproxy.systemd.connect", FakeSystemd(tmp_path / "units.json").connect)
    monkeypatch.setattr("tsproxy.cli.migrate.require_root", lambda *args: None)
    yield w


def tsproxy(world: World, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["migrate", *args])
    out, err = capsys.readouterr()
    return code, out.replace(str(world.root), "TMP"), err.replace(str(world.root), "TMP")


def test_plan_finds_the_seed(world: World) -> None:
    plan = migrate.plan(get_instance("fgpu"))
    assert plan.netns == "tsFGPU"
    assert [u.name for u in plan.units] == TO_STOP == plan.to_stop
    why = {u.name: u.why for u in plan.units}
    assert why == {
        "coredns-fgpu.service": "runs coredns, holds 100.121.76.21:53",
        "expose-socks-tsFGPU.service": "runs socat, holds 100.121.76.21:11080",
        "socks-tsFGPU.service": "runs microsocks in tsFGPU",
        "tailscaled-tsFGPU.service": f"runs tailscaled in tsFGPU, state {world.old_state}",
        "ts-netns.service": "makes or enters namespace tsFGPU"}
    assert [str(h) for h in plan.held] == [
        "100.121.76.21:11080 (tcp) is held by socat (pid 812, unit expose-socks-tsFGPU.service)",
        "100.121.76.21:53 (udp) is held by coredns (pid 813, unit coredns-fgpu.service)",
        "100.121.76.21:53 (tcp) is held by coredns (pid 813, unit coredns-fgpu.service)"]
    assert (plan.state_from, plan.state_unit) == (str(world.old_state), "tailscaled-tsFGPU.service")
    assert str(plan.old_listen) == "100.121.76.21:11080" and plan.listen_problem is None
    assert plan.strangers == []


def test_prints_every_unit_and_the_exact_commands(world: World,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = tsproxy(world, capsys, "fgpu")
    assert (code, err) == (0, "")
    assert out.splitlines()[:7] == [
        "fgpu: the hand-made setup in namespace tsFGPU:",
        "  coredns-fgpu.service         enabled, active    runs coredns, holds 100.121.76.21:53",
        "  expose-socks-tsFGPU.service  enabled, active    runs socat, holds 100.121.76.21:11080",
        "  socks-tsFGPU.service         enabled, active    runs microsocks in tsFGPU",
        "  tailscaled-tsFGPU.service    enabled, active    runs tailscaled in tsFGPU, "
        "state TMP/var/lib/tailscale-tsFGPU",
        "  ts-netns.service             enabled, active    makes or enters namespace tsFGPU",
        "100.121.76.21:11080 (tcp) is held by socat (pid 812, unit expose-socks-tsFGPU.service)"]
    assert out.endswith(
        "clients keep their setup: the old proxy listened on 100.121.76.21:11080, "
        "tsproxy listens on 100.121.76.21:11080\n"
        "to move to tsproxy, run:\n"
        f"  1. systemctl disable --now {' '.join(TO_STOP)}\n"
        "  2. ip netns del tsFGPU  (if it is still there)\n"
        "  3. tsproxy migrate fgpu --state-from TMP/var/lib/tailscale-tsFGPU  (the node keeps "
        "its key and 100.x address: no new login)\n"
        "  4. systemctl start tsproxy@fgpu\n"
        "  5. tsproxy status fgpu\n"
        "(tsproxy migrate fgpu --stop --state-from TMP/var/lib/tailscale-tsFGPU runs the "
        "steps before the start)\n")
    assert not (world.root / "systemctl.log").read_text().count("disable")  # only looked
    assert not (world.root / "var/lib/tsproxy").exists()


def test_after_a_first_start_of_tsproxy(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    """tsproxy@fgpu started beside the old setup (its sockets failed) made a node of its
    own: stop it first, and --force the copy."""
    world.systemd(**{"tsproxy-tailscaled@fgpu.service": {"ActiveState": "active"}})
    (world.root / "var/lib/tsproxy/fgpu").mkdir(parents=True)
    (world.root / "var/lib/tsproxy/fgpu/tailscaled.state").write_text("{}")
    code, out, _ = tsproxy(world, capsys, "fgpu")
    assert code == 0
    assert out.split("to move to tsproxy, run:\n")[1] == (
        "  1. systemctl stop tsproxy@fgpu\n"
        f"  2. systemctl disable --now {' '.join(TO_STOP)}\n"
        "  3. ip netns del tsFGPU  (if it is still there)\n"
        "  4. tsproxy migrate fgpu --state-from TMP/var/lib/tailscale-tsFGPU --force  (the node "
        "keeps its key and 100.x address: no new login; --force: the node tsproxy@fgpu made is "
        "kept aside)\n"
        "  5. systemctl start tsproxy@fgpu\n"
        "  6. tsproxy status fgpu\n")


def test_a_stopped_setup_is_still_found(world: World) -> None:
    """Disabled and stopped units are listed but need no command; enabled ones still do."""
    for path in (world.root / "proc/net").iterdir():
        path.write_text("header\n")
    world.systemd(**{u: {"ActiveState": "inactive", "UnitFileState": "disabled"}
                     for u in OLD_UNITS[:4]})
    plan = migrate.plan(get_instance("fgpu"))
    assert [u.name for u in plan.units] == sorted(OLD_UNITS)
    assert plan.to_stop == ["coredns-fgpu.service"]
    assert plan.held == []


def test_listen_elsewhere_changes_the_clients(world: World) -> None:
    (world.conf_dir / "fgpu.conf").write_text("listen = 100.121.76.21:1080\n")
    problem = migrate.plan(get_instance("fgpu")).listen_problem
    assert problem == (
        f"{world.conf_dir}/fgpu.conf: listen: 100.121.76.21:1080 is not where the old proxy "
        "listened (100.121.76.21:11080): the Mac's PAC file, resolver file and ssh config "
        "would change; to keep them, set listen = 100.121.76.21:11080")


@pytest.mark.parametrize(("args", "message"), [
    (["fgpu", "--from-netns", "tsNOPE"],
     "tsproxy: --from-netns: namespace tsNOPE does not exist (not in TMP/netns, named by no "
     "unit in TMP/etc/systemd/system)"),
    (["fgpu", "--state-from", "/nonexistent/state"],
     "tsproxy: --state-from: /nonexistent/state does not exist"),
    (["fgpu", "--state-from", "/"],
     "tsproxy: --state-from: / has no tailscaled.state: not a tailscaled --statedir"),
    (["fgpu", "--state-from", "TMP/var/lib/tailscale-tsFGPU"],
     "tsproxy: tailscaled (pid 814, unit tailscaled-tsFGPU.service) still runs on "
     "TMP/var/lib/tailscale-tsFGPU: copying a live state would make two nodes with one key; "
     "systemctl disable --now tailscaled-tsFGPU.service (or add --stop)"),
    (["nope"], "tsproxy: no instance 'nope': TMP/etc/tsproxy.d/nope.conf does not exist"),
])
def test_bad_input_is_one_line_and_changes_nothing(world: World, capsys: pytest.CaptureFixture[str],
                                                   args: list[str], message: str) -> None:
    args = [arg.replace("TMP", str(world.root)) for arg in args]
    assert tsproxy(world, capsys, *args) == (1, "", message + "\n")
    assert not (world.root / "var/lib/tsproxy").exists()
    assert "disable" not in (world.root / "systemctl.log").read_text()


def test_a_port_held_outside_the_old_setup_is_refused(world: World,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    world.process(900, ["/usr/bin/nc", "-l", "11080"], "session-3.scope", (5555,))
    code, out, err = tsproxy(world, capsys, "fgpu", "--stop")
    assert (code, out) == (1, "")
    assert err == ("tsproxy: nc (pid 900, unit session-3.scope) holds a port of fgpu and is no "
                   "unit of the old setup: stop it yourself\n")
    assert "disable" not in (world.root / "systemctl.log").read_text()
    # Without --stop it is one more step to do by hand.
    assert "stop nc (pid 900, unit session-3.scope) (it is no unit of the old setup)" in \
        tsproxy(world, capsys, "fgpu")[1]


def stop_old_setup(world: World) -> None:
    """What `systemctl disable --now` does to the fake world."""
    for path in (world.root / "proc/net").iterdir():
        path.write_text("header\n")
    for pid in (812, 813, 814):
        for fd in (world.root / "proc" / str(pid) / "fd").iterdir():
            fd.unlink()
        (world.root / "proc" / str(pid) / "cmdline").write_bytes(b"")
    world.systemd(**{u: {"ActiveState": "inactive", "UnitFileState": "disabled"}
                     for u in OLD_UNITS})


def test_copies_the_state_keeping_modes(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    stop_old_setup(world)
    code, out, err = tsproxy(world, capsys, "fgpu", "--state-from", str(world.old_state))
    assert (code, err) == (0, "")
    dest = world.root / "var/lib/tsproxy/fgpu"
    assert out.endswith("copied TMP/var/lib/tailscale-tsFGPU to TMP/var/lib/tsproxy/fgpu\n"
                        "next: systemctl start tsproxy@fgpu; tsproxy status fgpu\n")
    assert sorted(p.name for p in dest.iterdir()) == ["derpmap.cached.json", "tailscaled.state"]
    assert (dest / "tailscaled.state").read_bytes() == \
        (world.old_state / "tailscaled.state").read_bytes()
    assert stat.S_IMODE(dest.stat().st_mode) == 0o700
    assert stat.S_IMODE((dest / "tailscaled.state").stat().st_mode) == 0o600
    assert [p.name for p in dest.parent.iterdir()] == ["fgpu"]  # no half-built leftovers

    # Again: the instance has a node of its own now; --force keeps it aside.
    (dest / "tailscaled.state").write_text('{"_machinekey": "bmV3"}')
    code, out, err = tsproxy(world, capsys, "fgpu", "--state-from", str(world.old_state))
    assert (code, out) == (1, "")
    assert err == ("tsproxy: TMP/var/lib/tsproxy/fgpu already holds a node of its own "
                   "(tailscaled.state): --force replaces it (the old one is kept aside)\n")
    code, out, err = tsproxy(world, capsys, "fgpu", "--force", "--state-from", str(world.old_state))
    assert code == 0, err
    aside = [p for p in dest.parent.iterdir() if p.name.startswith("fgpu.before-migrate-")]
    assert len(aside) == 1 and (aside[0] / "tailscaled.state").read_text() == '{"_machinekey": "bmV3"}'
    assert (dest / "tailscaled.state").read_text() == '{"_machinekey": "bWtleQ=="}'


def test_refuses_while_tsproxys_tailscaled_runs(world: World,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    stop_old_setup(world)
    world.systemd(**{"tsproxy-tailscaled@fgpu.service": {"ActiveState": "active"}})
    code, _, err = tsproxy(world, capsys, "fgpu", "--state-from", str(world.old_state))
    assert (code, err) == (1, "tsproxy: tsproxy-tailscaled@fgpu.service runs on "
                              "TMP/var/lib/tsproxy/fgpu: systemctl stop tsproxy@fgpu first\n")


def test_a_state_file_becomes_tailscaled_state(world: World) -> None:
    state_file = world.root / "old.state"
    state_file.write_text("{}")
    migrate.copy_state(str(state_file), "fgpu")
    dest = world.root / "var/lib/tsproxy/fgpu"
    assert [p.name for p in dest.iterdir()] == ["tailscaled.state"]
    assert stat.S_IMODE((dest / "tailscaled.state").stat().st_mode) == 0o600


def test_stop_runs_systemctl_and_deletes_the_namespace(world: World,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[list[str]] = []

    def run(argv: list[str]) -> None:
        ran.append(argv)
        stop_old_setup(world)

    monkeypatch.setattr("tsproxy.migrate.run", run)
    plan = migrate.plan(get_instance("fgpu"))
    migrate.stop(plan)
    assert ran == [[os.environ["TSPROXY_SYSTEMCTL"], "disable", "--now", *TO_STOP],
                   ["ip", "netns", "del", "tsFGPU"]]


def test_stop_alone_says_how_to_keep_the_node(world: World, capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tsproxy.migrate.run", lambda argv: stop_old_setup(world))
    code, out, err = tsproxy(world, capsys, "fgpu", "--stop")
    assert (code, err) == (0, "")
    assert out.endswith("next: tsproxy migrate fgpu --state-from TMP/var/lib/tailscale-tsFGPU "
                        "(keeps the node), then systemctl start tsproxy@fgpu\n")
    assert not (world.root / "var/lib/tsproxy").exists()


def test_namespaces_to_choose_from(world: World) -> None:
    units = Path(os.environ["TSPROXY_UNIT_DIRS"])
    (units / "tailscaled-tsLAB.service").write_text(
        "[Service]\nExecStart=ip netns exec tsLAB tailscaled --statedir=/var/lib/lab\n")
    # tsWORK and tsLAB are other tailnets: fgpu's is the one named like it.
    assert migrate.plan(get_instance("fgpu")).netns == "tsFGPU"
    (world.conf_dir / "fgpu.conf").rename(world.conf_dir / "farm.conf")
    with pytest.raises(TsproxyError, match=r"the old units use several namespaces \(tsFGPU, "
                                           r"tsLAB, tsWORK\): say which was farm's with "
                                           r"--from-netns NS"):
        migrate.plan(get_instance("farm"))
    assert migrate.plan(get_instance("farm"), "tsFGPU").netns == "tsFGPU"


@pytest.mark.parametrize(("flags", "found"), [
    ("--statedir=/var/lib/ts-x", "/var/lib/ts-x"),
    ("--state=/var/lib/ts-x/tailscaled.state --statedir=/var/lib/ts-x", "/var/lib/ts-x"),
    ("--state /srv/x.state", "/srv/x.state"),
    ("--statedir=/var/lib/ts-x --state=/srv/x.state", "/srv/x.state"),
    ("--state=mem:", None),
])
def test_where_the_old_state_is(tmp_path: Path, flags: str, found: str | None) -> None:
    (tmp_path / "x.service").write_text(f"[Service]\nExecStart=-/usr/bin/env TS_DEBUG=1 "
                                        f"ip netns exec tsX /usr/sbin/tailscaled {flags}\n")
    unit = oldsetup.parse_unit("x.service", str(tmp_path / "x.service"))
    assert unit.namespaces == {"tsX"} and oldsetup.second_tailscaled(unit)
    assert oldsetup.tailscaled_state(unit) == found
