"""`GET /metrics` on the proxy's port, judged by promtool (Prometheus' own checker) and by
what the counters say after known traffic; the same client checks as /proxy.pac."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator

import pytest
from proxyhost import HTTP_PORT, OUTSIDER, PROXY, TARGET4, ProxyWorld

pytestmark = pytest.mark.netns

METRICS_URL = f"http://{PROXY}/metrics"


@pytest.fixture(scope="module")
def world(world: ProxyWorld) -> Iterator[ProxyWorld]:
    world.start_proxy("allow_clients = 100.80.0.0/24\n")
    yield world


def sample(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(['tsproxy_instance="fgpu"', *(f'{k}="{v}"' for k, v in labels.items())])
    match = re.search(rf"^{name}\{{{re.escape(wanted)}\}} (\S+)$", text, re.MULTILINE)
    assert match, f"no {name}{{{wanted}}} in:\n{text}"
    return float(match[1])


def test_promtool_accepts_the_metrics(world: ProxyWorld) -> None:
    for _ in range(3):
        done = world.curl("-x", f"socks5://{PROXY}", f"http://{TARGET4}:{HTTP_PORT}/")
        assert done.returncode == 0, done.stderr
    world.curl("-x", f"socks5://{PROXY}", f"http://127.0.0.1:{HTTP_PORT}/")  # refused: egress
    done = world.curl("-D", "/dev/stderr", METRICS_URL)
    assert done.returncode == 0, done.stderr
    assert "Content-Type: text/plain; version=0.0.4; charset=utf-8" in done.stderr
    check = subprocess.run(["promtool", "check", "metrics"], input=done.stdout,
                           capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    text = done.stdout
    assert sample(text, "tsproxy_connections_total", outcome="closed") >= 3
    assert sample(text, "tsproxy_connections_total", outcome="refused: egress") == 1
    assert sample(text, "tsproxy_bytes_total", direction="down") > 0
    assert sample(text, "tsproxy_connections_open") == 1  # this scrape
    assert sample(text, "tsproxy_tailscaled_up") == 1
    assert sample(text, "tsproxy_tailscaled_backend_state", state="Running") == 1
    assert sample(text, "tsproxy_tailscaled_peers") == 4
    # Four requests and this scrape completed their handshakes; the egress refusal never
    # dialled.
    assert sample(text, "tsproxy_handshake_seconds_count") == 5
    assert sample(text, "tsproxy_dial_seconds_count") == 3
    assert sample(text, "tsproxy_dial_seconds_bucket", le="+Inf") == 3
    # tailscaled's own metrics, relayed with the instance's label.
    assert sample(text, "tailscaled_inbound_bytes_total", path="direct_ipv4") == 1234
    world.wait_log(r": GET /metrics: served \(\d+ bytes\)")


def test_metrics_obey_allow_clients(world: ProxyWorld) -> None:
    done = world.client("curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--interface",
                        OUTSIDER, "--max-time", "5", METRICS_URL)
    assert done.stdout == "403", done.stderr
    world.wait_log(r"GET /metrics: client address not in allow_clients")
    assert world.curl("-X", "POST", "-o", "/dev/null", "-w", "%{http_code}",
                      METRICS_URL).stdout == "405"
