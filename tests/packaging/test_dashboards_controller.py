"""The controller's Grafana dashboards (packaging/grafana/controller.json, fleet.json) are well-formed and
query only metrics a real controller's GET /metrics exports (docs/metrics.md)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Api
from tests.fixtures.dashboards import DASHBOARDS, METRIC, expressions

SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
NAMES = ["controller.json", "fleet.json"]


def _queryable(api: Api) -> set[str]:
    """Every series name PromQL can select from this controller: the family names with their type's
    suffixes (a labelled family with no sample yet still counts: it is declared in the exposition)."""
    text = api.client.get("/metrics").text
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.update(family.name + suffix for suffix in SUFFIXES[family.type])
    return names


@pytest.fixture(scope="module")
def dashboards() -> dict[str, dict[str, Any]]:
    return {name: json.loads((DASHBOARDS / name).read_text()) for name in NAMES}


@pytest.mark.parametrize("name", NAMES)
def test_dashboard_is_grafana_json_on_the_prometheus_variable(
    name: str, dashboards: dict[str, dict[str, Any]]
) -> None:
    d = dashboards[name]
    assert isinstance(d["schemaVersion"], int) and d["schemaVersion"] >= 30
    assert d["uid"] and d["title"]
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)) >= 8
    for panel in d["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, panel["title"]
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"]), panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} queries nothing"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}"
            assert METRIC.search(target["expr"]), (
                f"panel {panel['title']!r}: no fedge metric in {target['expr']!r}"
            )


def test_dashboards_query_only_exported_metrics(api: Api, dashboards: dict[str, dict[str, Any]]) -> None:
    exported = _queryable(api)
    for name, d in dashboards.items():
        queried = {m for expr in expressions(d) for m in METRIC.findall(expr)}
        missing = sorted(queried - exported)
        assert not missing, f"{name} queries metrics the controller does not export: {missing}"
        assert len(queried) >= 5, name
    # and the headline metrics of each are there
    assert "fedge_controller_http_request_duration_seconds_bucket" in exported
    assert "fedge_controller_devices_online" in exported
