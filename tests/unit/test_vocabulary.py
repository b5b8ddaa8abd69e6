"""The names tsproxy_generator.vocabulary spells are the names the shipped units have: a unit
renamed in units/ without the vocabulary (or the other way) fails here, not on a booted host."""

from __future__ import annotations

from pathlib import Path

import pytest

from tsproxy_generator import vocabulary

pytestmark = pytest.mark.unit

UNITS = Path(__file__).resolve().parents[2] / "units"


def shipped(unit_name: str) -> bool:
    return (UNITS / f"{unit_name}.j2").is_file()


@pytest.mark.parametrize("template, kind", [
    (vocabulary.INSTANCE, ".service"), (vocabulary.TAILSCALED, ".service"),
    (vocabulary.PROXY, ".socket"), (vocabulary.PROXY, ".service"),
    (vocabulary.WATCH, ".service"), (vocabulary.LOGIN, ".service")])
def test_every_template_is_shipped(template: str, kind: str) -> None:
    assert vocabulary.unit(template, "fgpu", kind) == f"{template}@fgpu{kind}"
    assert shipped(f"{template}@{kind}")


def test_the_dns_units_are_shipped() -> None:
    assert shipped(vocabulary.DNS_SOCKET) and shipped(vocabulary.DNS_SERVICE)


def test_directories_match_the_units() -> None:
    tailscaled = (UNITS / f"{vocabulary.TAILSCALED}@.service.j2").read_text()
    proxy = (UNITS / f"{vocabulary.PROXY}@.service.j2").read_text()
    assert "StateDirectory=tsproxy/%i" in tailscaled and "RuntimeDirectory=tsproxy/%i" in tailscaled
    assert vocabulary.state_dir("fgpu") == "/var/lib/tsproxy/fgpu"
    assert vocabulary.tailscaled_socket("fgpu") == "/run/tsproxy/fgpu/tailscaled.sock"
    assert "RuntimeDirectory=tsproxy-socks/%i" in proxy
    assert vocabulary.PROXY_STATS_DIR == "/run/tsproxy-socks"
    dns = (UNITS / f"{vocabulary.DNS_SERVICE}.j2").read_text()
    assert "RuntimeDirectory=tsproxy-dns\n" in dns
    assert vocabulary.DNS_COUNTS == "/run/tsproxy-dns/queries.json"


def test_network_names() -> None:
    assert vocabulary.netns_name("fgpu") == "ts-fgpu"
    assert vocabulary.netns_etc("fgpu") == "/etc/netns/ts-fgpu"
    assert vocabulary.nft_table("fgpu") == "tsproxy-fgpu"
    assert vocabulary.drop_in("/run/gen", "tsproxy@fgpu.service") == \
        "/run/gen/tsproxy@fgpu.service.d/50-tsproxy.conf"
    assert vocabulary.wants("/run/gen", "multi-user.target", "tsproxy@fgpu.service") == \
        "/run/gen/multi-user.target.wants/tsproxy@fgpu.service"
