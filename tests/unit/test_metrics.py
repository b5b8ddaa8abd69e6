"""The /metrics text: tailscaled's state and its own metrics relayed with the instance's
label, held to Prometheus' own checker (promtool)."""

from __future__ import annotations

import subprocess

import pytest

from tsproxy import metrics
from tsproxy.proxy.stats import Stats

pytestmark = pytest.mark.unit

USERMETRICS = """\
# TYPE tailscaled_outbound_dropped_packets_total counter
# HELP tailscaled_outbound_dropped_packets_total Counts the number of dropped packets
tailscaled_outbound_dropped_packets_total{reason="acl"} 3
# TYPE tailscaled_approved_routes gauge
# HELP tailscaled_approved_routes Number of approved routes
tailscaled_approved_routes 0
not a sample line
"""


def test_relayed_samples_get_the_instance_label() -> None:
    assert metrics.relayed("fgpu", USERMETRICS) == [
        "# TYPE tailscaled_outbound_dropped_packets_total counter",
        "# HELP tailscaled_outbound_dropped_packets_total Counts the number of dropped packets",
        'tailscaled_outbound_dropped_packets_total{tsproxy_instance="fgpu",reason="acl"} 3',
        "# TYPE tailscaled_approved_routes gauge",
        "# HELP tailscaled_approved_routes Number of approved routes",
        'tailscaled_approved_routes{tsproxy_instance="fgpu"} 0']


def test_tailscaled_state_and_key_expiry() -> None:
    status = {"BackendState": "Running", "Self": {"KeyExpiry": "2027-02-23T10:00:00Z"},
              "Peer": {"a": {"Online": True}, "b": {"Online": False}}}
    text = metrics.render(metrics.tailscaled_families("fgpu", status, now=1_800_000_000.0))
    assert 'tsproxy_tailscaled_backend_state{tsproxy_instance="fgpu",state="Running"} 1' in text
    assert 'tsproxy_tailscaled_peers_online{tsproxy_instance="fgpu"} 1' in text
    # 2027-02-23T10:00:00Z is 1803376800.
    assert 'tsproxy_tailscaled_key_expiry_seconds{tsproxy_instance="fgpu"} 3376800' in text
    down = metrics.render(metrics.tailscaled_families("fgpu", None))
    assert down.splitlines()[-1] == 'tsproxy_tailscaled_up{tsproxy_instance="fgpu"} 0'


def test_promtool_accepts_every_family() -> None:
    stats = Stats('fg"pu', "100.121.76.21:11080")  # a label value that needs escaping
    stats.ended = {"closed": 5, "refused: egress": 1}
    stats.dials.observe(0.02)
    status = {"BackendState": "NeedsLogin", "Peer": {}}
    text = metrics.render([*metrics.proxy_families(stats),
                           *metrics.tailscaled_families('fg"pu', status)],
                          metrics.relayed('fg"pu', USERMETRICS))
    done = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr + text


def test_latency_histograms_count_cumulatively() -> None:
    stats = Stats("fgpu", "100.121.76.21:11080")
    for seconds in (0.0004, 0.0005, 0.003, 0.003, 42.0):
        stats.handshakes.observe(seconds)
    text = metrics.render(metrics.proxy_families(stats))
    lines = [line for line in text.splitlines()
             if line.startswith("tsproxy_handshake_seconds")]
    assert 'tsproxy_handshake_seconds_bucket{tsproxy_instance="fgpu",le="0.0005"} 2' in lines
    assert 'tsproxy_handshake_seconds_bucket{tsproxy_instance="fgpu",le="0.0025"} 2' in lines
    assert 'tsproxy_handshake_seconds_bucket{tsproxy_instance="fgpu",le="0.005"} 4' in lines
    assert 'tsproxy_handshake_seconds_bucket{tsproxy_instance="fgpu",le="10.0"} 4' in lines
    assert 'tsproxy_handshake_seconds_bucket{tsproxy_instance="fgpu",le="+Inf"} 5' in lines
    assert 'tsproxy_handshake_seconds_count{tsproxy_instance="fgpu"} 5' in lines
    name, value = lines[-2].split(" ")
    assert name == 'tsproxy_handshake_seconds_sum{tsproxy_instance="fgpu"}'
    assert float(value) == pytest.approx(42.0069)
    assert 'tsproxy_dial_seconds_count{tsproxy_instance="fgpu"} 0' in text
