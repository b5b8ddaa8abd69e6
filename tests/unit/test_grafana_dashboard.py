"""The Grafana dashboard shipped in the package's examples: a well-formed dashboard whose every
query parses (promtool) and names only metrics /metrics serves. tests/netns/
test_prometheus_dashboard.py evaluates the same queries against a real Prometheus."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the helper lives there

import dashboard

from tsproxy import metrics
from tsproxy.dns.counts import QueryCounts
from tsproxy.proxy.stats import Stats, write_json

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
METRIC = re.compile(r"\b(tsproxy_[a-z_]+)\b")


def test_it_is_shipped_in_the_packages_examples() -> None:
    listed = (REPO / "debian" / "tsproxy.examples").read_text().split()
    assert str(dashboard.PATH.relative_to(REPO)) in listed


def test_a_dashboard_grafana_imports() -> None:
    board = dashboard.load()
    assert isinstance(board["schemaVersion"], int) and board["uid"] and board["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["tsproxy_instance"]["type"] == "query"
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    taken: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {(grid["x"] + dx, grid["y"] + dy)
                 for dx in range(grid["w"]) for dy in range(grid["h"])}
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells
    for panel in dashboard.panels(board):
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        refs = [target["refId"] for target in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"] and target["expr"]
            used = set(dashboard.VARIABLE.findall(target["expr"]))
            assert used <= set(variables) | set(dashboard.BUILTINS), target["expr"]


def served_names(tmp_path: Path) -> set[str]:
    """The metric names of every family /metrics can serve, histograms' series included."""
    counts = tmp_path / "queries.json"
    write_json(str(counts), QueryCounts().snapshot())
    status = {"BackendState": "Running", "Self": {"KeyExpiry": "2030-01-01T00:00:00Z"}}
    families = [*metrics.proxy_families(Stats("fgpu", "100.80.0.1:1080")),
                *metrics.tailscaled_families("fgpu", status),
                *metrics.dns_families("fgpu", str(counts))]
    names = {family.name for family in families}
    return names | {f"{family.name}_{suffix}" for family in families
                    if "# TYPE " + family.name + " histogram" in family.lines
                    for suffix in ("bucket", "sum", "count")}


def test_every_query_parses_and_names_served_metrics(tmp_path: Path) -> None:
    board = dashboard.load()
    found = dashboard.queries(board, {"tsproxy_instance": "fgpu"})
    served = served_names(tmp_path)
    for title, expr in found:
        assert set(METRIC.findall(expr)) - {metrics.LABEL} <= served, (title, expr)
    # promtool parses each as a recording rule's expression, as Prometheus would.
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query{n}", "expr": expr} for n, (_title, expr) in enumerate(found)]}]}
    path = tmp_path / "rules.yml"
    path.write_text(json.dumps(rules))  # JSON is YAML
    done = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(found)} rules found" in done.stdout, done.stdout
