"""The real ``fedge-agent run`` process hosts the monitor: the deployment's reference comes with the model,
inferences through the local API are watched, ``GET /metrics`` serves them, and the drift event and the
summaries reach the controller by themselves (the agent's outbox, over its link)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from controller.client import FedgeClient
from controller.state import ControllerState
from fedge_protocol import DriftDetector, TelemetryType
from tests.conftest import ADMIN_TOKEN, LiveServer
from tests.e2e.helpers import ADMIN, add_model, enrolled_device, upload_onnx
from tests.fixtures.services import free_port

Live = tuple[LiveServer, ControllerState]
WINDOW = 64  # quiet windows of 16 would already cross the normed-Wasserstein threshold 0.3 by chance


def _until(what: str, probe: Any, timeout: float = 180.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = probe()
        except OSError:
            found = None
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_the_agent_process_monitors_and_reports_drift(
    controller: Live, http: httpx.Client, tmp_path: Path
) -> None:
    url = controller[0].url
    rng = np.random.default_rng(3)
    buf = io.BytesIO()
    np.savez(buf, x=rng.normal(0, 1, (300, 4)).astype(np.float32))
    r = http.post(
        "/v1/datasets",
        headers=ADMIN,
        files={"dataset": ("reference.npz", buf.getvalue(), "application/octet-stream")},
        data={"metadata": json.dumps({"organization_id": "org-1", "samples_dimension": "(4,)"})},
    )
    assert r.status_code == 201, r.text
    dataset_id = r.json()["dataset_id"]
    model_id, version = upload_onnx(http, add_model(0.5))
    device = enrolled_device(url, http, tmp_path / "agent")
    device.link.close()
    port = free_port()
    env = {
        **os.environ,
        "FEDGE_AGENT_DRIFT_WINDOW": str(WINDOW),
        "FEDGE_AGENT_MONITOR_SUMMARY_SECONDS": "1",
        "FEDGE_AGENT_METRICS_PORT": "0",
    }
    args = ["run", "--state-dir", str(device.state_dir), "--api-port", str(port), "--poll-interval", "0.2"]
    agent = subprocess.Popen(
        [sys.executable, "-m", "edge_agent.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        with FedgeClient(url, token=ADMIN_TOKEN) as fc:
            deployment = fc.deploy(model_id, version, device_ids=[device.id], reference_dataset_id=dataset_id)
            assert fc.wait_deployment(deployment.deployment_id, timeout=120, poll=0.2).state == "succeeded"
        base = f"http://127.0.0.1:{port}"
        monitor_json = device.state_dir / "monitor.json"
        metrics_url = _until(
            "monitor.json", lambda: monitor_json.exists() and json.loads(monitor_json.read_text())
        )
        metrics_url = metrics_url["metrics_url"]
        index = device.state_dir / "references" / "index.json"
        _until(
            "the reference on the device",
            lambda: index.exists() and f"{model_id}@{version}" in index.read_text(),
        )
        time.sleep(3)  # the monitor loads it within its refresh interval (2 s)
        for shift in [0.0] * WINDOW + [4.0] * WINDOW:
            x = (rng.normal(0, 1, (1, 4)) + shift).astype(np.float32).tolist()
            req = urllib.request.Request(f"{base}/v1/infer", data=json.dumps({"inputs": {"x": x}}).encode())
            out = json.load(urllib.request.urlopen(req, timeout=10))
            assert np.allclose(out["outputs"]["y"], np.asarray(x) + 0.5, atol=1e-5)

        def drift_events() -> list[dict[str, Any]]:
            page = http.get(f"/v1/devices/{device.id}/events", headers=ADMIN).json()
            return [e for e in page["items"] if e["detector"] == DriftDetector.DATA]

        events = _until("the drift event at the controller", drift_events)
        assert len(events) == 1 and (events[0]["model_id"], events[0]["version"]) == (model_id, version)
        assert events[0]["body"]["window"] == 1 and events[0]["body"]["reference"] == dataset_id

        def summaries() -> list[dict[str, Any]]:
            page = http.get(
                f"/v1/devices/{device.id}/telemetry", headers=ADMIN, params={"type": TelemetryType.MONITOR}
            ).json()
            return [t["body"] for t in page["items"] if t["body"].get("model_id") == model_id]

        def all_counted() -> list[dict[str, Any]] | None:  # a summary every second: together, every inference
            found = summaries()
            return found if sum(b["inferences"] for b in found) >= 2 * WINDOW else None

        summary = _until("the summaries", all_counted)
        assert sum(b["inferences"] for b in summary) == 2 * WINDOW and summary[-1]["drift"] is True
        with urllib.request.urlopen(metrics_url, timeout=10) as resp:
            samples = {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(resp.read().decode())
                for s in family.samples
            }
        labels = (("model_id", model_id), ("version", str(version)))
        assert samples[("fedge_agent_inference_seconds_count", labels)] == 2 * WINDOW
        assert samples[("fedge_agent_drift_detected", labels)] == 1
        assert samples[("fedge_agent_drift_checks_total", labels)] == 2
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(60)
    assert agent.returncode == 0, agent.stdout.read() if agent.stdout else ""
