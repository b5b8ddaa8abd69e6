"""Which conf changes a running proxy takes live and which need a restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from tsproxy.proxy.reconfigure import changes
from tsproxy_generator.config import load
from tsproxy_generator.model import TailnetConf

pytestmark = pytest.mark.unit

BASE = "listen = 100.121.76.21:11080\nforward = 15432=db:5432, 53000/udp=dns:53\n"


def conf(tmp_path: Path, extra: str = "", base: str = BASE) -> TailnetConf:
    (tmp_path / "fgpu.conf").write_text(base + extra)
    return load(str(tmp_path / "fgpu.conf"))


@pytest.mark.parametrize("extra, base, expected", [
    ("", BASE, ([], [])),
    ("autostart = no\ndns_domains = corp.example\n", BASE, ([], [])),  # not the proxy's
    ("allow_clients = 10.0.0.0/8\nmax_connections = 5\n", BASE,
     (["allow_clients", "max_connections"], [])),
    ("", BASE.replace("db:5432", "pg:5432"), (["forward"], [])),  # a new target, same port
    ("", BASE.replace("15432=", "15433="), ([], ["forward"])),  # a new port: a new socket
    ("", BASE.replace("53000/udp", "53000/tcp"), ([], ["forward"])),
    ("suffix = gpu\nallow_egress = 10.1.0.0/16\n", BASE, (["allow_egress"], ["suffix"])),
    ("tailscaled_args = --verbose=1\nhostname = gw\n", BASE,
     ([], ["hostname", "tailscaled_args"])),
    ("dns_listen = no\n", BASE, ([], ["dns_listen"])),
])
def test_changes(tmp_path: Path, extra: str, base: str,
                 expected: tuple[list[str], list[str]]) -> None:
    old = conf(tmp_path)
    live, restart = changes(old, conf(tmp_path, extra, base))
    assert (sorted(live), sorted(restart)) == expected
