"""Closing the loop (controller/fleet/drift_policy.py): a device's drift event, posted by an enrolled identity
over the real telemetry route, runs the model's policy: ``notify`` records one action per debounce interval
(and POSTs it to a loopback webhook), ``retrain`` trains a new version in a local job, translates it to ONNX
and rolls it out as a canary deployment to the devices that run the model."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from controller.db.models import Device as DeviceRow
from controller.fleet.drift_policy import OPEN
from controller.state import build_state
from edge_agent.identity import DeviceIdentity, enroll
from fedge_protocol import DriftDetector, TelemetryType, paths
from tests.conftest import ADMIN_TOKEN, LiveServer, SettingsFactory, fedge_cli
from tests.controller.test_walkthrough import digits_npz, example_package
from tests.e2e.helpers import ADMIN, add_model, deploy, enrollment_token, upload_onnx


@pytest.fixture
def http(live: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.url, timeout=60) as client:
        yield client


class Webhook:
    """A loopback HTTP receiver that keeps every JSON body POSTed to it."""

    def __init__(self) -> None:
        received: list[dict[str, Any]] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.received = received
        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/drift"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.close()


def _device(live: LiveServer, http: httpx.Client, tmp_path: Path) -> DeviceIdentity:
    return enroll(
        live.url, enrollment_token(http, {"site": "lab"}), tmp_path / "device", facts={"cpu_count": 1}
    )


def _drift(http: httpx.Client, device: DeviceIdentity, seq: int, model_id: str, version: int) -> None:
    """A drift alarm as the agent's monitor sends it (fedge_protocol.DriftEvent), over HTTP telemetry."""
    body = {
        "type": TelemetryType.DRIFT.value,
        "model_id": model_id,
        "version": version,
        "detector": DriftDetector.DATA.value,
        "window": seq,
        "drift_share": 0.75,
        "drifted_features": ["a", "b", "c"],
        "at": "2026-12-02T01:00:00+00:00",
    }
    r = http.post(
        paths.TELEMETRY.format(device_id=device.device_id),
        headers={"Authorization": f"Bearer {device.sign_jwt()}"},
        json={"seq": seq, "body": body},
    )
    assert r.status_code == 204, r.text


def _actions(http: httpx.Client, model_id: str) -> list[dict[str, Any]]:
    r = http.get(f"/v1/models/{model_id}/drift-actions", headers=ADMIN)
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


def _until(predicate: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def _policy(http: httpx.Client, model_id: str, **body: Any) -> httpx.Response:
    return http.put(f"/v1/models/{model_id}/drift-policy", headers=ADMIN, json=body)


def _quiesced(live: LiveServer) -> None:
    """Every queued event handled (the loop's queue is empty and one more tick passed)."""
    loop = live.state.drift
    _until(lambda: loop._queue.empty())
    time.sleep(3 * loop.tick_seconds)


def test_notify_records_one_action_per_debounce_interval_and_calls_the_webhook(
    live: LiveServer, http: httpx.Client, tmp_path: Path, webhook: Webhook
) -> None:
    device = _device(live, http, tmp_path)
    model_id, version = upload_onnx(http, add_model(1.0))
    r = _policy(http, model_id, on_drift="notify", debounce_seconds=3600, webhook_url=webhook.url)
    assert r.status_code == 200, r.text
    for seq in (1, 2, 3):
        _drift(http, device, seq, model_id, version)
    _until(lambda: bool(_actions(http, model_id)) and _actions(http, model_id)[0]["events"] == 3)
    _quiesced(live)

    (action,) = _actions(http, model_id)
    assert (action["kind"], action["state"], action["device_id"]) == ("notify", "notified", device.device_id)
    assert (action["event_seq"], action["version"], action["detector"]) == (1, version, "evidently")
    assert action["events"] == 3  # three alarms, one action
    assert action["steps"]["webhook"] == {"url": webhook.url, "status": 204}
    assert [h["id"] for h in webhook.received] == [action["id"]]
    assert webhook.received[0]["model_id"] == model_id
    events = http.get(paths.EVENTS.format(device_id=device.device_id), headers=ADMIN).json()
    assert events["total"] == 3  # every alarm is still stored as a device event


def test_without_debounce_each_event_is_its_own_action(
    live: LiveServer, http: httpx.Client, tmp_path: Path
) -> None:
    device = _device(live, http, tmp_path)
    model_id, version = upload_onnx(http, add_model(1.0))
    assert _policy(http, model_id, on_drift="notify", debounce_seconds=0).status_code == 200
    _drift(http, device, 1, model_id, version)
    _until(lambda: len(_actions(http, model_id)) == 1)
    _drift(http, device, 2, model_id, version)
    _drift(http, device, 2, model_id, version)  # redelivered: stored once, acted on once
    _until(lambda: len(_actions(http, model_id)) == 2)
    _quiesced(live)
    assert [a["event_seq"] for a in _actions(http, model_id)] == [2, 1]


def test_policy_none_takes_no_action(live: LiveServer, http: httpx.Client, tmp_path: Path) -> None:
    device = _device(live, http, tmp_path)
    model_id, version = upload_onnx(http, add_model(1.0))
    assert http.get(f"/v1/models/{model_id}/drift-policy", headers=ADMIN).json()["on_drift"] == "none"
    _drift(http, device, 1, model_id, version)
    _quiesced(live)
    assert _actions(http, model_id) == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"on_drift": "retrain"}, "retrain_with"),  # no training spec on this model
        ({"on_drift": "sometimes"}, None),
        ({"on_drift": "notify", "webhook_url": "ftp://x"}, None),
        ({"on_drift": "retrain", "rollout": {"waves": [0.5, 0.2]}}, None),
        ({"on_drift": "retrain", "retrain_with": "fl"}, None),  # fl settings missing
        ({"on_drift": "retrain", "retrain_with": "fl", "fl": {"rounds": 0}}, "fl.rounds"),
        ({"on_drift": "notify", "debounce_seconds": -1}, None),
    ],
)
def test_a_policy_that_cannot_be_carried_out_is_422(
    live: LiveServer, http: httpx.Client, body: dict[str, Any], field: str | None
) -> None:
    model_id, _ = upload_onnx(http, add_model(1.0))
    r = _policy(http, model_id, **body)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    if field is not None:
        assert r.json()["field"] == field
    assert http.get(f"/v1/models/{model_id}/drift-policy", headers=ADMIN).json()["on_drift"] == "none"


def test_policy_routes_check_the_model_and_the_role(live: LiveServer, http: httpx.Client) -> None:
    assert _policy(http, "no-such-model", on_drift="notify").status_code == 404
    assert http.get("/v1/models/no-such-model/drift-actions", headers=ADMIN).status_code == 404
    model_id, _ = upload_onnx(http, add_model(1.0))
    r = http.post("/v1/tokens", headers=ADMIN, json={"name": "op", "role": "operator"})
    operator = {"Authorization": f"Bearer {r.json()['token']}"}
    r = http.put(f"/v1/models/{model_id}/drift-policy", headers=operator, json={"on_drift": "notify"})
    assert r.status_code == 200 and r.json()["on_drift"] == "notify"


def test_cli_sets_and_shows_the_policy(live: LiveServer, http: httpx.Client) -> None:
    model_id, _ = upload_onnx(http, add_model(1.0))
    out = fedge_cli(
        live, "models", "drift-policy", model_id, "--on-drift", "notify", "--debounce", "30", "--json"
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["debounce_seconds"] == 30
    shown = fedge_cli(live, "models", "drift-policy", model_id, "--json", token=ADMIN_TOKEN)
    assert json.loads(shown.stdout)["on_drift"] == "notify"
    listed = fedge_cli(live, "models", "drift-actions", model_id)
    assert listed.returncode == 0 and "0 of 0 action(s)" in listed.stderr
    bad = fedge_cli(live, "models", "drift-policy", model_id, "--on-drift", "notify", "--waves", "half")
    assert bad.returncode == 2 and "--waves" in bad.stderr  # a usage error, nothing sent
    refused = fedge_cli(
        live, "models", "drift-policy", model_id, "--on-drift", "notify", "--waves", "0.5,0.2"
    )
    assert refused.returncode == 1 and "422" in refused.stderr


def _settled(http: httpx.Client, model_id: str) -> dict[str, Any]:
    _until(lambda: bool(_actions(http, model_id)) and _actions(http, model_id)[0]["state"] not in OPEN, 120)
    (action,) = _actions(http, model_id)
    return action


def test_a_retrain_the_controller_cannot_start_records_why(
    live: LiveServer, http: httpx.Client, tmp_path: Path
) -> None:
    device = _device(live, http, tmp_path)
    ds = http.post(
        "/v1/datasets",
        headers=ADMIN,
        files={"dataset": ("d.npz", b"data", "application/octet-stream")},
        data={"metadata": json.dumps({"organization_id": "org-1", "samples_dimension": "(4,)"})},
    ).json()["dataset_id"]
    body = {
        "model_params": {"developer_id": "dev-1", "organization_id": "org-1"},
        "data_params": {"dataset_id": ds},
        "training": {"kind": "container", "image": "registry.example/trainer:1"},
    }
    r = http.post("/v1/models", headers=ADMIN, json=body)
    assert r.status_code == 201, r.text
    model_id, version = upload_onnx(http, add_model(1.0), str(r.json()["model_id"]))
    assert _policy(http, model_id, on_drift="retrain").status_code == 200
    _drift(http, device, 1, model_id, version)

    action = _settled(http, model_id)

    assert action["state"] == "failed" and "container" in action["error"]  # the local runner's refusal
    assert "job_id" not in action["steps"]
    assert http.get("/v1/jobs", params={"model_id": model_id}, headers=ADMIN).json() == []


def test_an_fl_retrain_without_devices_running_the_model_records_why(
    live: LiveServer, http: httpx.Client, tmp_path: Path
) -> None:
    device = _device(live, http, tmp_path)  # enrolled, but runs no model
    model_id, version = upload_onnx(http, add_model(1.0))
    r = _policy(http, model_id, on_drift="retrain", retrain_with="fl", fl={"rounds": 2, "local_epochs": 1})
    assert r.status_code == 200, r.text
    assert r.json()["fl"] == {"rounds": 2, "local_epochs": 1}
    _drift(http, device, 1, model_id, version)

    action = _settled(http, model_id)

    assert action["state"] == "failed" and "no active device runs model" in action["error"]
    assert "fl_job_id" not in action["steps"] and action["steps"]["devices"] == []


# --------------------------------------------------------------------------------------------- retrain
@pytest.fixture
def trained_live(make_settings: SettingsFactory, shared_evm) -> Iterator[LiveServer]:  # type: ignore[no-untyped-def]
    state = build_state(make_settings(job_timeout_seconds=300), shared_evm)
    with LiveServer(state) as server:
        yield server
    state.close()


def _register_sklearn(http: httpx.Client) -> str:
    ds = http.post(
        "/v1/datasets",
        headers=ADMIN,
        files={"dataset": ("digits.npz", digits_npz())},
        data={"metadata": json.dumps({"organization_id": "org", "samples_dimension": "(1,8,8)"})},
    )
    assert ds.status_code == 201, ds.text
    meta = {
        "model_params": {"developer_id": "dev", "organization_id": "org"},
        "data_params": {"dataset_id": ds.json()["dataset_id"]},
        "training": {"kind": "python", "entrypoint": "examples.digits_sklearn.train", "hyperparameters": {}},
    }
    r = http.post(
        "/v1/models",
        headers=ADMIN,
        files=[
            ("metadata", (None, json.dumps(meta).encode())),
            ("training_package", ("pkg.tar.gz", example_package("digits_sklearn"))),
        ],
    )
    assert r.status_code == 201, r.text
    return str(r.json()["model_id"])


def _job_done(http: httpx.Client, job_id: str) -> dict[str, Any]:
    job: dict[str, Any] = {}

    def ended() -> bool:
        job.update(http.get(f"/v1/jobs/{job_id}", headers=ADMIN).json())
        return job["status"] in ("succeeded", "failed", "cancelled")

    _until(ended, 300)
    return job


@pytest.mark.heavy
def test_retrain_trains_translates_and_rolls_out_a_canary_to_the_devices_running_the_model(
    trained_live: LiveServer, tmp_path: Path
) -> None:
    live = trained_live
    with httpx.Client(base_url=live.url, timeout=120) as http:
        # Prepare: a trained, translated model deployed to one enrolled device; a second device runs nothing
        model_id = _register_sklearn(http)
        first = _job_done(http, http.post(f"/v1/models/{model_id}/train", headers=ADMIN).json()["job_id"])
        assert first["status"] == "succeeded", first
        onnx_v = http.post(f"/v1/models/{model_id}/translate", headers=ADMIN, json={}).json()["version"]
        runs = _device(live, http, tmp_path / "a")
        idle = _device(live, http, tmp_path / "b")
        deploy(http, model_id, onnx_v, [runs.device_id])
        r = _policy(http, model_id, on_drift="retrain", rollout={"waves": [0.5, 1.0], "auto_rollback": True})
        assert r.status_code == 200, r.text

        # Execute: the device reports drift (twice: one retrain)
        _drift(http, runs, 1, model_id, onnx_v)
        _drift(http, runs, 2, model_id, onnx_v)

        def settled() -> bool:
            items = _actions(http, model_id)
            return bool(items) and items[0]["state"] in ("deployed", "failed")

        _until(settled, 300)
        (action,) = _actions(http, model_id)

        # Assert: each step recorded, and each is what it says
        assert action["state"] == "deployed", action
        assert (action["kind"], action["events"]) == ("retrain", 2)
        steps = action["steps"]
        job = http.get(f"/v1/jobs/{steps['job_id']}", headers=ADMIN).json()
        assert job["status"] == "succeeded" and steps["job_id"] != first["job_id"]
        assert steps["trained_version"] == job["model_version"]
        versions = {
            v["version"]: v for v in http.get(f"/v1/models/{model_id}/versions", headers=ADMIN).json()
        }
        onnx = versions[steps["translated_version"]]
        assert onnx["kind"] == "onnx" and onnx["source_version"] == steps["trained_version"]
        assert steps["translated_version"] > onnx_v
        dep = http.get(f"/v1/deployments/{steps['deployment_id']}", headers=ADMIN).json()
        assert (dep["model_id"], dep["version"]) == (model_id, steps["translated_version"])
        assert dep["auto_rollback"] is True and dep["strategy"] == {"waves": [0.5, 1.0]}
        assert onnx["created_by"] == "drift-policy"
        assert [t["device_id"] for t in dep["devices"]] == [runs.device_id]  # not the idle device
        with live.state.sessions() as s:
            row = s.get(DeviceRow, runs.device_id)
            assert row is not None and (row.desired or {})["version"] == steps["translated_version"]
            other = s.get(DeviceRow, idle.device_id)
            assert other is not None and not other.desired


def test_a_retrain_cut_short_before_its_job_is_failed_and_frees_the_model(
    live: LiveServer, http: httpx.Client
) -> None:
    import datetime as dt

    from controller.db.models import DriftAction, utcnow

    model_id, _ = upload_onnx(http, add_model(1.0))
    old = utcnow() - dt.timedelta(minutes=5)
    with live.state.sessions.begin() as s:
        row = DriftAction(model_id=model_id, kind="retrain", state="training", device_id="d", event_seq=1,
                          events=1, steps={}, created_at=old, updated_at=old)  # fmt: skip
        s.add(row)
        s.flush()
        action_id = row.id

    live.state.drift.advance()

    (action,) = _actions(http, model_id)
    assert (action["id"], action["state"]) == (action_id, "failed")
    assert "before the retrain job started" in action["error"]
