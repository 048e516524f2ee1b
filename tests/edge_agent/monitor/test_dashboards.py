"""Every metric the Grafana dashboards query is one the agent really exports (scraped from a live
monitor's GET /metrics)."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge_agent.monitor.service import MonitorService
from tests.fixtures.dashboards import DASHBOARDS, METRIC, expressions


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
    for expr in expressions(dashboard["templating"]):
        queried |= set(METRIC.findall(expr))
    exported = _exported(exercised[0].http.url)
    missing = sorted(queried - exported)
    assert not missing, f"{name} queries metrics the agent does not export: {missing}"
    assert len(queried) >= 6


def _queried(dashboard: dict[str, Any]) -> set[str]:
    queried: set[str] = set()
    for expr in expressions(dashboard):
        queried |= set(METRIC.findall(expr))
    return queried


def test_the_agent_dashboard_queries_only_what_fedge_agent_run_exports(tmp_path: Path) -> None:
    """agent.json (device: latency, outcomes, links) against the process registry of ``fedge-agent run``
    (edge_agent.metrics) after a model ran, was refused once and a deployment outcome was counted."""
    from edge_agent.learning.supernode import SupernodeService
    from edge_agent.link.outbox import Outbox
    from edge_agent.metrics import DeviceMetrics, MeteredRuntime, MetricsService
    from edge_agent.runtime.session import InferenceError
    from tests.e2e.helpers import add_model

    metrics = DeviceMetrics()
    runtime = MeteredRuntime(None, metrics)
    (tmp_path / "m.onnx").write_bytes(add_model())
    runtime.swap("m", 1, "00" * 32, tmp_path / "m.onnx")
    runtime.infer({"x": [[1.0, 2.0, 3.0, 4.0]]})
    with pytest.raises(InferenceError):
        runtime.infer({"x": [[1.0]]})
    metrics.deployment("succeeded")
    metrics.outbox = Outbox.in_state_dir(tmp_path)
    metrics.fl_status = SupernodeService(tmp_path, None).status  # FL enabled, not in a job
    service = MetricsService(metrics, tmp_path)
    service.start()
    try:
        exported = _exported(service.http.url)
    finally:
        service.stop()
        metrics.outbox.close()
    dashboard = json.loads((DASHBOARDS / "agent.json").read_text())
    for panel in dashboard["panels"]:
        assert all(METRIC.findall(t["expr"]) for t in panel["targets"]), panel["title"]
    queried = _queried(dashboard)
    missing = sorted(queried - exported)
    assert not missing, f"agent.json queries metrics fedge-agent run does not export: {missing}"
    for name in ("deployments_total", "outbox_depth", "controller_reachable", "mqtt_connected", "fl_jobs"):
        assert f"fedge_agent_{name}" in queried


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
