"""The shipped Grafana dashboard (examples/grafana-dashboard.json) as the tests read it: its
panels, and each query with the template variables filled in as Grafana would fill them."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

PATH = Path(__file__).resolve().parents[1] / "examples" / "grafana-dashboard.json"
# Grafana's own variables the queries may use, and what stands in for them in a test that
# scrapes every second.
BUILTINS = {"__rate_interval": "15s"}
VARIABLE = re.compile(r"\$\{?(\w+)\}?")


def load() -> dict[str, Any]:
    return dict(json.loads(PATH.read_text()))


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel but the rows (rows hold no queries, and nothing when not collapsed)."""
    return [panel for panel in dashboard["panels"] if panel["type"] != "row"]


def queries(dashboard: dict[str, Any], values: dict[str, str]) -> list[tuple[str, str]]:
    """(panel title and refId, expr with `values` and BUILTINS substituted) for every query."""
    table = BUILTINS | values

    def fill(match: re.Match[str]) -> str:
        return table[match[1]]

    return [(f"{panel['title']} {target['refId']}", VARIABLE.sub(fill, target["expr"]))
            for panel in panels(dashboard) for target in panel["targets"]]
