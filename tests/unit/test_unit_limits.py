"""The fd limits the shipped units ask for hold what the code's defaults need, so the two
numbers cannot drift apart."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tsproxy.dns import server as dns_server
from tsproxy.proxy import pipes
from tsproxy.proxy.service import FD_HEADROOM, fds_needed
from tsproxy_generator.config import load

pytestmark = pytest.mark.unit

UNITS = Path(__file__).resolve().parents[2] / "units"


def limit_nofile(unit: str) -> int:
    found = re.findall(r"^LimitNOFILE=(\d+)$", (UNITS / unit).read_text(), re.MULTILINE)
    assert len(found) == 1, unit
    return int(found[0])


def test_the_proxy_unit_holds_the_default_max_connections_all_busy(tmp_path: Path) -> None:
    conf = tmp_path / "fgpu.conf"
    conf.write_text("listen = 100.64.0.1:1080\n")
    default = load(str(conf)).max_connections
    assert fds_needed(default) <= fds_needed(default, busy=True) <= limit_nofile(
        "tsproxy-socks@.service.j2")
    # The headroom holds the pool of idle pipes with room to spare.
    assert pipes.POOL_MAX * 2 <= FD_HEADROOM // 2


def test_the_dns_unit_holds_the_tcp_cap_and_the_pending_queries() -> None:
    need = dns_server.MAX_TCP + dns_server.MAX_PENDING + dns_server.FD_RESERVE
    assert need <= limit_nofile("tsproxy-dns.service.j2")
