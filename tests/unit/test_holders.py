"""Who holds a port (tsproxy/holders.py): real sockets of this test process, found through
the real /proc; the systemd unit from a fake /proc's cgroup files; and the lines status and
doctor print instead of a restart that cannot work."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_systemd import FakeSystemd

from tsproxy import doctor, health, holders, status
from tsproxy.holders import Held, Holder
from tsproxy_generator.config import load
from tsproxy_generator.model import Listen, TailnetConf

pytestmark = pytest.mark.unit


def listen(text: str) -> Listen:
    host, _, port = text.rpartition(":")
    return Listen(ipaddress.ip_address(host.strip("[]")), int(port))


@pytest.fixture
def tcp_listener() -> Iterator[socket.socket]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock


def test_finds_this_process_on_its_listening_socket(tcp_listener: socket.socket) -> None:
    port = tcp_listener.getsockname()[1]
    found = holders.holders(listen(f"127.0.0.1:{port}"))
    assert [h.pid for h in found] == [os.getpid()]
    assert found[0].command == Path(f"/proc/{os.getpid()}/comm").read_text().strip()
    held = holders.held(listen(f"127.0.0.1:{port}"), ("udp", "tcp"))
    assert held is not None and held.protocol == "tcp"
    assert str(held).startswith(f"127.0.0.1:{port} (tcp) is held by {found[0].command} "
                                f"(pid {os.getpid()}")
    # The same port on UDP, or another address, is free.
    assert holders.holders(listen(f"127.0.0.1:{port}"), "udp") == []
    assert holders.holders(listen(f"127.0.0.2:{port}")) == []


def test_a_wildcard_holds_every_address() -> None:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", 0))
        port = sock.getsockname()[1]
        for address in ("100.121.76.21", "127.0.0.1", "fd7a:115c:a1e0::1"):
            assert [h.pid for h in holders.holders(listen(f"[{address}]:{port}" if ":" in
                                                          address else f"{address}:{port}"),
                                                   "udp")] == [os.getpid()], address
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert holders.holders(listen(f"100.121.76.21:{port}")) != []
        assert holders.holders(listen(f"[fd7a:115c:a1e0::1]:{port}")) == []


def test_a_closed_socket_is_free(tcp_listener: socket.socket) -> None:
    port = tcp_listener.getsockname()[1]
    tcp_listener.close()
    assert holders.held(listen(f"127.0.0.1:{port}")) is None


def test_parse_endpoint() -> None:
    if sys.byteorder != "little":
        pytest.skip("the hex below is a little-endian kernel's")
    assert holders.parse_endpoint("154C7964:2B48") == (
        ipaddress.ip_address("100.121.76.21"), 11080)
    assert holders.parse_endpoint("0000000000000000FFFF0000154C7964:0035") == (
        ipaddress.ip_address("100.121.76.21"), 53)
    assert holders.parse_endpoint("00000000000000000000000001000000:0035") == (
        ipaddress.ip_address("::1"), 53)


def test_unit_from_cgroup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TSPROXY_PROC", str(tmp_path))
    cgroups = {7: "0::/system.slice/expose-socks-tsFGPU.service\n",
               8: "12:pids:/x\n1:name=systemd:/user.slice/user-0.slice/session-3.scope\n",
               9: "0::/\n"}
    for pid, text in cgroups.items():
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "cgroup").write_text(text)
    assert holders.unit_of(7) == "expose-socks-tsFGPU.service"
    assert holders.unit_of(8) == "session-3.scope"
    assert holders.unit_of(9) is None
    assert holders.unit_of(10) is None  # gone


def test_stop_command() -> None:
    where = listen("100.121.76.21:11080")
    socat = Holder(812, "socat", "expose-socks-tsFGPU.service")
    child = Holder(901, "socat", "expose-socks-tsFGPU.service")
    assert Held(where, "tcp", (socat, child)).stop == \
        "systemctl disable --now expose-socks-tsFGPU.service"
    assert Held(where, "tcp", (Holder(1, "systemd", "old.socket"),)).stop == \
        "systemctl disable --now old.socket"
    # A process in a login session is no unit to disable (nor is pid 1 ever to be killed).
    assert Held(where, "tcp", (Holder(77, "nc", "session-3.scope"),)).stop == "stop it"
    assert str(Held(where, "tcp", (socat,))) == (
        "100.121.76.21:11080 (tcp) is held by socat (pid 812, unit expose-socks-tsFGPU.service)")


HELD = Held(listen("100.121.76.21:11080"), "tcp",
            (Holder(812, "socat", "expose-socks-tsFGPU.service"),))
DNS_HELD = Held(listen("100.121.76.21:53"), "udp",
                (Holder(813, "coredns", "coredns-fgpu.service"),))


@pytest.fixture
def conf(tmp_path: Path) -> TailnetConf:
    (tmp_path / "fgpu.conf").write_text("listen = 100.121.76.21:11080\n")
    return load(str(tmp_path / "fgpu.conf"))


def fake_held(where: Listen, protocols: tuple[str, ...] = ("tcp",)) -> Held | None:
    return {11080: HELD, 53: DNS_HELD}.get(where.port)


def active_row(conf: TailnetConf, **units: str) -> status.Status:
    """A running instance whose units are active except `units` (role -> ActiveState)."""
    row = status.Status("fgpu", listen=str(conf.listen), backend_state="Running")
    row.states = {role: {"ActiveState": units.get(role, "active")}
                  for role in health.units_of("fgpu")}
    row.units = {role: state["ActiveState"] for role, state in row.states.items()}
    return row


def test_status_names_the_holder_not_a_restart(conf: TailnetConf,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tsproxy.status.holders.held", fake_held)
    conf = load_text(conf, "dns_listen = 100.121.76.21:53\n")
    row = active_row(conf, proxy_socket="failed", dns_socket="failed")
    status._read_holders(row, conf)
    assert row.as_json()["listen_held"] == \
        f"{HELD}: systemctl disable --now expose-socks-tsFGPU.service"
    assert health.first_problem(health.instance(conf, row)) == (
        "100.121.76.21:11080 (tcp) is held by socat (pid 812, unit expose-socks-tsFGPU.service): "
        "systemctl disable --now expose-socks-tsFGPU.service, then systemctl restart "
        "tsproxy-socks@fgpu.socket (see tsproxy migrate fgpu)")
    # The proxy socket free and up, the DNS port still held.
    row = active_row(conf, dns_socket="failed")
    status._read_holders(row, conf)
    assert row.as_json()["listen_held"] is None
    assert health.first_problem(health.instance(conf, row)) == (
        "100.121.76.21:53 (udp) is held by coredns (pid 813, unit coredns-fgpu.service): "
        "systemctl disable --now coredns-fgpu.service, then systemctl restart "
        "tsproxy-dns.socket tsproxy-dns.service (see tsproxy migrate fgpu)")


def test_doctor_names_the_holder(conf: TailnetConf, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tsproxy.status.holders.held", fake_held)
    monkeypatch.setattr("tsproxy.doctor.network_problem", lambda conf: None)
    monkeypatch.setattr("tsproxy.doctor.dns_problem", lambda conf: "no answer")
    conf = load_text(conf, "dns_listen = 100.121.76.21:53\n")
    row = active_row(conf, proxy_socket="failed", dns_socket="failed")
    status._read_holders(row, conf)
    found = {f.check: f for f in health.instance(conf, row, doctor.Deep())}
    proxy, dns = found["proxy socket bound"], found["DNS answers an IP-embedded name"]
    assert (proxy.problem, proxy.fix, proxy.safe) == (
        str(HELD), "systemctl disable --now expose-socks-tsFGPU.service, then systemctl restart "
        "tsproxy-socks@fgpu.socket (see tsproxy migrate fgpu)", False)
    assert (dns.problem, dns.fix, dns.safe) == (
        str(DNS_HELD), "systemctl disable --now coredns-fgpu.service, then systemctl restart "
        "tsproxy-dns.socket tsproxy-dns.service (see tsproxy migrate fgpu)", False)


def load_text(conf: TailnetConf, extra: str) -> TailnetConf:
    with open(conf.path, "a", encoding="utf-8") as file:
        file.write(extra)
    return load(conf.path)


def test_tsproxys_own_units_are_no_one_else(monkeypatch: pytest.MonkeyPatch) -> None:
    """A proxy still serving on the socket it was handed holds the port too: not a stranger."""
    ours = Holder(5, "tsproxy", "tsproxy-socks@fgpu.service")
    socat = Holder(812, "socat", "expose-socks-tsFGPU.service")
    found = {"tcp": [ours, socat], "udp": [ours]}
    monkeypatch.setattr("tsproxy.holders.holders", lambda where, protocol: found[protocol])
    where = listen("100.121.76.21:11080")
    assert holders.held(where) == Held(where, "tcp", (socat,))
    assert holders.held(where, ("udp",)) is None


def test_the_socket_unit_systemd_holds_a_port_for(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Found among every socket unit's Listen entries: by type, port and address (a socket
    on :: or 0.0.0.0 holds every address); paths and netlink entries are no match."""
    states = tmp_path / "units.json"
    states.write_text(json.dumps({
        "dbus.socket": {"Listen": [["Stream", "/run/dbus/system_bus_socket"]]},
        "old-dns.socket": {"Listen": [["Datagram", "[::]:53"], ["Stream", "[::]:53"]]},
        "expose.socket": {"Listen": [["Stream", "100.121.76.21:11080"]]},
        "udev.socket": {"Listen": [["Netlink", "kobject-uevent 1"]]}}))
    monkeypatch.setattr("tsproxy.systemd.connect", FakeSystemd(states).connect)
    assert holders.socket_unit(listen("100.121.76.21:11080"), "tcp") == "expose.socket"
    assert holders.socket_unit(listen("100.121.76.21:11080"), "udp") is None
    assert holders.socket_unit(listen("100.121.76.21:53"), "udp") == "old-dns.socket"
    assert holders.socket_unit(listen("100.121.76.22:11080"), "tcp") is None
