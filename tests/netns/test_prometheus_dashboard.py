"""The DNS responder's counts on a real proxy's /metrics, and a real Prometheus scraping that
proxy: every query of the shipped Grafana dashboard, evaluated through Prometheus' HTTP API,
parses and returns series. So the dashboard asks for what the proxy serves.

The world of proxyhost.py: `tsproxy proxy fgpu` and `tsproxy dns` (dnshost.py) in the fake
host, one fake tailscaled for both; Prometheus (Debian's) runs in the client namespace,
listening on that namespace's loopback and scraping the proxy's port every second.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from dnshost import RUN_DIR, Responder, dig, running
from fakehost import REPO, TIMEOUT
from proxyhost import CLIENT, HTTP_PORT, NAME, PROXY, TARGET4, USERMETRICS

from tsproxy_generator.vocabulary import DNS_COUNTS

sys.path.insert(0, str(REPO / "tests"))
import dashboard
from fake_localapi import make_node, make_status

pytestmark = pytest.mark.netns

PROMETHEUS = "127.0.0.1:9090"  # on the client namespace's loopback
STATUS = make_status("gw", ["100.70.0.1"], peers=[make_node("web", [TARGET4])])
STATUS["Self"]["KeyExpiry"] = "2031-01-01T00:00:00Z"
CONFIG = {  # JSON is YAML
    "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
    "scrape_configs": [{"job_name": "tsproxy", "static_configs": [{"targets": [PROXY]}]}],
}
# Asks Prometheus (in the client namespace) each expression of argv[1] (a JSON list) at once;
# prints each one's {"status", "error", "result"}.
ASK = """
import json, sys, urllib.parse, urllib.request
def ask(expr):
    url = "http://%s/api/v1/query?" % sys.argv[2] + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return json.load(reply)
    except urllib.error.HTTPError as error:
        return json.load(error)
print(json.dumps([ask(expr) for expr in json.loads(sys.argv[1])]))
"""


class Prometheus:
    def __init__(self, dns: Responder, workdir: Path) -> None:
        self.world = dns.world
        config = workdir / "prometheus.yml"
        config.write_text(json.dumps(CONFIG))
        self.log_path = workdir / "prometheus.log"
        command = ["nsenter", f"--target={self.world.fake.holder.pid}", "--net", "--mount", "--",
                   "ip", "netns", "exec", CLIENT, "timeout", "300", "prometheus",
                   f"--config.file={config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
                   f"--web.listen-address={PROMETHEUS}", "--log.level=warn"]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=log,
                                            start_new_session=True)

    def ask(self, exprs: list[str]) -> list[dict[str, Any]]:
        out = self.world.python(ASK, json.dumps(exprs), PROMETHEUS)
        return list(json.loads(out))

    def wait_until(self, exprs: list[str],
                   wrong: Callable[[list[dict[str, Any]]], list[str]]) -> None:
        """Asks `exprs` until `wrong` finds nothing wrong with the answers (scrapes come
        every second, the DNS counters every 2 s)."""
        deadline = time.monotonic() + 30
        while problems := wrong(self.ask(exprs)):
            assert time.monotonic() < deadline, "\n".join(problems)
            time.sleep(1)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while True:
            done = self.world.client("curl", "-sf", f"http://{PROMETHEUS}/-/ready")
            if done.returncode == 0:
                return
            assert self.process.poll() is None, self.log_path.read_text()
            assert time.monotonic() < deadline, self.log_path.read_text()
            time.sleep(0.2)

    def close(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(TIMEOUT)


@pytest.fixture(scope="module")
def dns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Responder]:
    """The proxy of fgpu and the DNS responder, one fake tailscaled telling both."""
    if os.geteuid() != 0:
        pytest.skip("the netns tier needs root")

    def prepare(dns: Responder) -> None:
        dns.daemon(NAME, {"status": STATUS, "usermetrics": USERMETRICS})
        dns.world.start_proxy("allow_clients = 100.80.0.0/24\n", "--names-socket",
                              f"{RUN_DIR}/{NAME}/tailscaled.sock")

    with running(tmp_path_factory.mktemp("metrics"), prepare) as dns:
        yield dns


def scrape(dns: Responder) -> str:
    done = dns.world.curl(f"http://{PROXY}/metrics")
    assert done.returncode == 0, done.stderr
    check = subprocess.run(["promtool", "check", "metrics"], input=done.stdout,
                           capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr + done.stdout
    return done.stdout


def test_the_proxy_shows_its_instances_dns_counts(dns: Responder) -> None:
    for _ in range(3):
        assert dig(dns, "+short", "10.1.2.3.fgpu").split() == ["10.1.2.3"]
    assert "status: NOERROR" in dig(dns, "web.fgpu", "AAAA")  # NODATA: web has no IPv6
    assert "status: NXDOMAIN" in dig(dns, "nobody.fgpu")
    assert "status: REFUSED" in dig(dns, "example.org", "TXT")
    dns.wait_counted(NAME, "A", "NOERROR", 3)
    dns.wait_counted("", "TXT", "REFUSED", 1)
    text = scrape(dns)
    ours = {tuple(match.groups()): int(match[3]) for match in re.finditer(
        r'^tsproxy_dns_queries_total\{tsproxy_instance="fgpu",rcode="(\w+)",type="(\w+)"\} '
        r"(\d+)$", text, re.MULTILINE)}
    assert ours == {("NOERROR", "A", "3"): 3, ("NOERROR", "AAAA", "1"): 1,
                    ("NXDOMAIN", "A", "1"): 1}, text
    assert 'tsproxy_dns_outside_queries_total{tsproxy_instance="fgpu",rcode="REFUSED",' \
        'type="TXT"} 1\n' in text
    started = re.search(r'^tsproxy_dns_start_time_seconds\{tsproxy_instance="fgpu"\} (\S+)$',
                        text, re.MULTILINE)
    assert started and abs(float(started[1]) - time.time()) < 300, text


def test_no_responder_no_dns_families(dns: Responder) -> None:
    """The responder stopped (systemd removes its RuntimeDirectory): the scrape goes on."""
    assert dns.stop() == 0
    dns.world.fake.run("rm", "-rf", os.path.dirname(DNS_COUNTS))
    try:
        text = scrape(dns)
        assert "tsproxy_dns_" not in text and "tsproxy_tailscaled_up" in text
    finally:
        dns.start()


def test_every_dashboard_query_returns_series(dns: Responder, tmp_path: Path) -> None:
    board = dashboard.load()
    found = [query for instance in ("fgpu", ".+")  # one instance, and Grafana's "All"
             for query in dashboard.queries(board, {"tsproxy_instance": instance})]
    prometheus = Prometheus(dns, tmp_path)
    try:
        prometheus.wait_ready()

        def traffic() -> None:
            """Connections through the proxy, and DNS queries in a zone and outside."""
            for _ in range(3):
                done = dns.world.curl("-x", f"socks5h://{PROXY}",
                                      f"http://{TARGET4}:{HTTP_PORT}/")
                assert done.returncode == 0, done.stderr
                assert dig(dns, "+short", "10.9.8.7.fgpu").split() == ["10.9.8.7"]
                assert "status: REFUSED" in dig(dns, "example.org")

        traffic()
        def empty(answers: list[dict[str, Any]]) -> list[str]:
            return [f"{title}: {expr}: {answer}"
                    for (title, expr), answer in zip(found, answers, strict=True)
                    if answer["status"] != "success" or not answer["data"]["result"]]

        prometheus.wait_until([expr for _title, expr in found], empty)
        # The instance variable's own query (label_values) finds the instance.
        values = prometheus.ask(["group by (tsproxy_instance) (tsproxy_start_time_seconds)"])
        assert [series["metric"] for series in values[0]["data"]["result"]] == \
            [{"tsproxy_instance": "fgpu"}], values

        # The rates see more traffic (a series' first sample is no increase to rate()):
        # not a dashboard of zeros.
        traffic()

        def idle(answers: list[dict[str, Any]]) -> list[str]:
            return [str(answer) for answer in answers if not answer["data"]["result"]
                    or not float(answer["data"]["result"][0]["value"][1]) > 0]

        prometheus.wait_until(
            ['sum(rate(tsproxy_dns_queries_total{tsproxy_instance="fgpu"}[30s]))',
             'sum(rate(tsproxy_dns_outside_queries_total{tsproxy_instance="fgpu"}[30s]))',
             'sum(rate(tsproxy_connections_total{outcome="closed"}[30s]))',
             'sum(rate(tsproxy_bytes_total{direction="down"}[30s]))'], idle)
    finally:
        prometheus.close()
