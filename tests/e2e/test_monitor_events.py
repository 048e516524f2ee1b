"""End to end against a live controller: a deployment names a drift reference data set, the agent fetches
it (SHA-256 checked against the chain record) with the model, its monitor sees drifted inputs through the
real inference path, and the drift event reaches the controller (``GET /v1/devices/{id}/events``, the SDK
and ``fedge devices events``)."""

from __future__ import annotations

import hashlib
import io
import json
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from controller.client import FedgeClient
from controller.state import ControllerState
from edge_agent.link.outbox import Outbox
from edge_agent.monitor.service import MonitorConfig, MonitorService
from edge_agent.runtime.hooks import InferenceService
from fedge_protocol import DriftDetector, TelemetryType
from tests.conftest import ADMIN_TOKEN, LiveServer, fedge_cli
from tests.e2e.helpers import ADMIN, add_model, deploy, enrolled_device, upload_onnx

Live = tuple[LiveServer, ControllerState]
WINDOW = 32


def _reference(http: httpx.Client, rng: np.random.Generator) -> tuple[str, str]:
    buf = io.BytesIO()
    np.savez(
        buf, x=rng.normal(0, 1, (400, 4)).astype(np.float32), feature_names=np.array(["a", "b", "c", "d"])
    )
    data = buf.getvalue()
    r = http.post(
        "/v1/datasets",
        headers=ADMIN,
        files={"dataset": ("reference.npz", data, "application/octet-stream")},
        data={"metadata": json.dumps({"organization_id": "org-1", "samples_dimension": "(4,)"})},
    )
    assert r.status_code == 201, r.text
    return str(r.json()["dataset_id"]), hashlib.sha256(data).hexdigest()


def _wait(predicate: Any, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_drift_event_reaches_the_controller(controller: Live, http: httpx.Client, tmp_path: Path) -> None:
    server, _ = controller
    rng = np.random.default_rng(5)
    model_id, version = upload_onnx(http, add_model(1.0))
    dataset_id, sha = _reference(http, rng)
    device = enrolled_device(server.url, http, tmp_path / "agent")
    device.agent.outbox = Outbox.in_state_dir(device.state_dir)
    deploy(http, model_id, version, [device.id], reference_dataset_id=dataset_id)
    device.agent.step()
    active = device.agent.runtime.active
    assert active is not None and (active.model_id, active.version) == (model_id, version)
    desired = json.loads((device.state_dir / "desired.json").read_text())
    assert desired["model"]["reference"]["sha256"] == sha  # signed, read from the dataset's chain record

    monitor = MonitorService(
        device.state_dir,
        runtime=device.agent.runtime,
        fetcher=device.link,
        record=device.agent.record_telemetry,
        config=MonitorConfig(window=WINDOW),
        refresh_seconds=0.05,
    )
    inference = InferenceService(device.agent.runtime)
    inference.observer = monitor.observer
    monitor.start()
    try:
        _wait(lambda: monitor.monitor.watch(model_id, version).data is not None)  # fetched and loaded
        for shift in [0.0] * WINDOW + [3.0] * WINDOW:
            x = (rng.normal(0, 1, (1, 4)) + shift).astype(np.float32).tolist()
            out = inference.handle({"inputs": {"x": x}})
            assert np.allclose(out["outputs"]["y"], np.asarray(x) + 1.0, atol=1e-5)
        _wait(lambda: any(e["detector"] == DriftDetector.DATA for e in monitor.monitor.events))
    finally:
        monitor.stop()
    device.agent.flush()  # no broker: telemetry goes over HTTP
    assert len(device.agent.outbox) == 0

    r = http.get(f"/v1/devices/{device.id}/events", headers=ADMIN)
    assert r.status_code == 200, r.text
    page = r.json()
    assert page["total"] == 1 and page["limit"] == 50
    event = page["items"][0]
    assert (event["type"], event["detector"]) == (TelemetryType.DRIFT, DriftDetector.DATA)
    assert (event["model_id"], event["version"]) == (model_id, version)
    assert event["body"]["drift_share"] == 1.0 and sorted(event["body"]["drifted_features"]) == [
        "a",
        "b",
        "c",
        "d",
    ]
    assert event["body"]["reference"] == dataset_id and event["occurred_at"]

    # a redelivered outbox record is stored once
    device.link.send_telemetry(event["seq"], event["body"])
    with FedgeClient(server.url, token=ADMIN_TOKEN) as fc:
        sdk = fc.device_events(device.id, type=TelemetryType.DRIFT)
        assert sdk.total == 1 and sdk.items[0].id == event["id"]
        assert fc.device_events(device.id, type="other").total == 0
        assert fc.device_events(device.id, model_id=model_id).total == 1
    cli = fedge_cli(server, "devices", "events", device.id)
    assert cli.returncode == 0, cli.stderr
    assert f"monitor.drift evidently {model_id} v{version} window 1, share 1.00" in cli.stdout
    assert "1 of 1 event(s)" in cli.stderr


def test_events_route_problems(controller: Live, http: httpx.Client, tmp_path: Path) -> None:
    server, _ = controller
    r = http.get("/v1/devices/no-such-device/events", headers=ADMIN)
    assert r.status_code == 404 and r.headers["content-type"].startswith("application/problem+json")
    device = enrolled_device(server.url, http, tmp_path / "agent2")
    for query in ("limit=0", "limit=501", "offset=-1"):
        r = http.get(f"/v1/devices/{device.id}/events?{query}", headers=ADMIN)
        assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json"), (
            query
        )
    assert http.get(f"/v1/devices/{device.id}/events").status_code == 401
    empty = http.get(f"/v1/devices/{device.id}/events", headers=ADMIN).json()
    assert empty == {"items": [], "total": 0, "limit": 50, "offset": 0}


def test_reference_datasets_are_checked_at_the_boundary(
    controller: Live, http: httpx.Client, tmp_path: Path
) -> None:
    server, _ = controller
    rng = np.random.default_rng(1)
    model_id, version = upload_onnx(http, add_model(2.0))
    device = enrolled_device(server.url, http, tmp_path / "agent3")
    r = http.post(
        "/v1/deployments",
        headers=ADMIN,
        json={
            "model_id": model_id,
            "version": version,
            "device_ids": [device.id],
            "reference_dataset_id": "nope",
        },
    )
    assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json")
    assert "not registered" in r.json()["detail"]
    assert http.get(f"/v1/devices/{device.id}", headers=ADMIN).json()["desired"] is None  # nothing written
    dataset_id, _ = _reference(http, rng)
    other_id, _ = _reference(http, rng)
    deployment_id = deploy(http, model_id, version, [device.id], reference_dataset_id=dataset_id)
    shown = http.get(f"/v1/deployments/{deployment_id}", headers=ADMIN).json()
    assert shown["reference_dataset_id"] == dataset_id
    # the device may fetch its own reference, and no other data set
    ok = device.link.http.get(f"/v1/devices/{device.id}/datasets/{dataset_id}")
    assert ok.status_code == 200 and hashlib.sha256(ok.content).hexdigest() == ok.headers["etag"].strip('"')
    refused = device.link.http.get(f"/v1/devices/{device.id}/datasets/{other_id}")
    assert refused.status_code == 403 and refused.headers["content-type"].startswith(
        "application/problem+json"
    )
