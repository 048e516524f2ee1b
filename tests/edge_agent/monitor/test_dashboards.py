"""Every metric the Grafana dashboards query is one the agent really exports (scraped from a live
monitor's GET /metrics)."""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge_agent.monitor.service import MonitorService

DASHBOARDS = Path(__file__).resolve().parents[3] / "packaging" / "grafana"
METRIC = re.compile(r"\b(fedge_[a-z0-9_]+)\b")


def _expressions(node: Any) -> Iterator[str]:
    """Every PromQL string of a dashboard: panel targets' ``expr`` and templating ``query``."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "query") and isinstance(value, str):
                yield value
            else:
                yield from _expressions(value)
    elif isinstance(node, list):
        for item in node:
            yield from _expressions(item)


def _exported(url: str) -> set[str]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.mark.parametrize("name", ["agent-performance.json", "agent-drift.json"])
def test_dashboard_queries_only_exported_metrics(
    name: str, exercised: tuple[MonitorService, list[dict[str, Any]]]
) -> None:
    dashboard = json.loads((DASHBOARDS / name).read_text())
    panels = dashboard["panels"]
    queried: set[str] = set()
    for panel in panels:
        exprs = [t["expr"] for t in panel["targets"]]
        assert exprs, f"panel {panel['title']!r} queries nothing"
        for expr in exprs:
            found = set(METRIC.findall(expr))
            assert found, f"panel {panel['title']!r}: no fedge metric in {expr!r}"
            queried |= found
    for expr in _expressions(dashboard["templating"]):
        queried |= set(METRIC.findall(expr))
    exported = _exported(exercised[0].http.url)
    missing = sorted(queried - exported)
    assert not missing, f"{name} queries metrics the agent does not export: {missing}"
    assert len(queried) >= 6


def test_the_dashboards_cover_the_seeds_figures() -> None:
    text = {n: (DASHBOARDS / n).read_text() for n in ("agent-performance.json", "agent-drift.json")}
    for metric in ("me", "mae", "mape", "bias"):
        assert f"fedge_agent_prediction_{metric}{{" in text["agent-performance.json"]
    for metric in (
        "fedge_agent_drift_detected",
        "fedge_agent_drift_share",
        "fedge_agent_drift_feature_score",
    ):
        assert metric in text["agent-drift.json"]
