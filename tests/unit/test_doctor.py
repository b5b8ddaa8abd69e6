"""doctor's judgement of an instance's network from `ip -j` output, and of its conf and
generated units; the booted system test breaks them for real and runs the fixes."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from pathlib import Path

import pytest

from tsproxy import doctor, health
from tsproxy_generator.config import load
from tsproxy_generator.model import TailnetConf

pytestmark = pytest.mark.unit


@pytest.fixture
def conf(tmp_path: Path) -> TailnetConf:
    (tmp_path / "fgpu.conf").write_text("listen = 100.121.76.21:11080\n"
                                        "veth_subnet = 10.200.7.0/30\n")
    return load(str(tmp_path / "fgpu.conf"))


def link(address: str) -> list[dict[str, object]]:
    local, prefix = address.split("/")
    return [{"ifname": "x", "addr_info": [{"family": "inet", "local": local,
                                           "prefixlen": int(prefix)}]}]


def fake_ip(host: list[dict[str, object]], inside: list[dict[str, object]],
            routes: list[dict[str, object]]) -> Callable[[list[str]], list[dict[str, object]]]:
    def ip(args: list[str]) -> list[dict[str, object]]:
        if args[:2] == ["addr", "show"]:
            return host
        if args[2:4] == ["addr", "show"]:
            return inside
        return routes
    return ip


def test_network_problem(conf: TailnetConf) -> None:
    assert conf.veth_host == ipaddress.IPv4Interface("10.200.7.1/30")
    whole = (link("10.200.7.1/30"), link("10.200.7.2/30"),
             [{"dst": "default", "gateway": "10.200.7.1"}])
    assert doctor.network_problem(conf, fake_ip(*whole)) is None
    assert doctor.network_problem(conf, fake_ip([], *whole[1:])) == "veth ts-fgpu is missing"
    assert doctor.network_problem(conf, fake_ip(link("10.200.7.5/30"), *whole[1:])) == \
        "veth ts-fgpu lacks 10.200.7.1/30"
    assert doctor.network_problem(conf, fake_ip(whole[0], [], whole[2])) == \
        "eth0 in ts-fgpu lacks 10.200.7.2/30"
    assert doctor.network_problem(conf, fake_ip(*whole[:2], [])) == \
        "ts-fgpu has no default route via 10.200.7.1"


def test_conf_findings() -> None:
    bad = doctor.conf_findings("fgpu", "/etc/tsproxy.d/fgpu.conf: listen: missing", "no")
    assert [(f.check, f.problem, f.fix, f.safe) for f in bad] == [
        ("conf valid", "/etc/tsproxy.d/fgpu.conf: listen: missing",
         "edit the conf, then: tsproxy check", False)]
    stale = doctor.conf_findings("fgpu", None, "stale")
    assert [(f.ok, f.fix, f.safe) for f in stale] == [
        (True, None, False), (False, "systemctl daemon-reload", True)]
    assert stale[1].problem == "generated units are older than the conf"
    assert all(f.ok for f in doctor.conf_findings("fgpu", None, "yes"))


def test_host_findings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TSPROXY_TAILSCALED", "/bin/true")
    assert health.tailscaled_installed() == health.Finding("host", "tailscaled installed", None)
    monkeypatch.setenv("TSPROXY_TAILSCALED", str(tmp_path / "tailscaled"))
    missing = health.tailscaled_installed()
    assert (missing.problem, missing.fix, missing.safe) == (
        f"{tmp_path}/tailscaled not found", "apt install tailscale", False)
