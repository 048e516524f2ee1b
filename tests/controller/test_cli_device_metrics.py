"""`fedge devices metrics <id>`: the device monitor's latest summaries as a table or JSON, newest last."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from edge_agent.identity import enroll
from edge_agent.link.client import ControllerLink
from fedge_protocol import TelemetryType
from tests.conftest import LiveServer, fedge_cli
from tests.e2e.helpers import enrollment_token


def test_metrics_show_the_latest_monitor_summaries(live: LiveServer, tmp_path: Path) -> None:
    with httpx.Client(base_url=live.url, timeout=30) as http:
        identity = enroll(live.url, enrollment_token(http), tmp_path / "d", facts={"cpu_count": 1})
    link = ControllerLink(identity)
    for seq in range(1, 13):
        link.send_telemetry(
            seq,
            {
                "type": TelemetryType.MONITOR.value,
                "model_id": "m" * 36,
                "version": 2,
                "inferences": 100 + seq,
                "latency_p50_ms": 0.5,
                "latency_p99_ms": 2.0,
                "dropped": 0,
                "errors": {"mae": 0.1 * seq, "mape": 0.05, "bias": -0.01},
                "drift": seq == 12,
                "drift_share": 0.75 if seq == 12 else 0.0,
                "at": f"2026-12-02T00:{seq:02d}:00Z",
            },
        )
    link.send_telemetry(13, {"type": "grid.day", "day": 3})  # other telemetry is not a summary
    out = fedge_cli(live, "devices", "metrics", identity.device_id, "--last", "3", "--json")
    assert out.returncode == 0, out.stderr
    body = json.loads(out.stdout)
    assert body["total"] == 12 and [i["inferences"] for i in body["items"]] == [110, 111, 112]
    table = fedge_cli(live, "devices", "metrics", identity.device_id)
    assert table.returncode == 0, table.stderr
    assert "yes (75%)" in table.stdout and "1.2" in table.stdout and "10 of 12 summaries" in table.stderr
