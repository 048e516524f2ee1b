"""End to end against a live controller: deploy ONNX models to in-process agents polling over HTTP."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import httpx
import pytest

from controller.state import ControllerState
from edge_agent.api import make_server, serve_in_thread
from edge_agent.deploy.agent import Agent
from edge_agent.deploy.executor import Executor, Outcome, Run
from edge_agent.deploy.fetch import Fetcher
from edge_agent.deploy.plan import Activate, Desired, Step, plan
from edge_agent.deploy.slots import SlotStore
from edge_agent.link.signed import SignatureInvalid, verify_desired_state
from edge_agent.runtime.session import ModelRuntime
from tests.conftest import LiveServer
from tests.e2e.helpers import ADMIN, Device, add_model, deploy, enrolled_device, failing_model, upload_onnx

Live = tuple[LiveServer, ControllerState]


class SimulatedCrash(BaseException):
    """The process 'dies' between two steps (a BaseException: nothing in the agent catches it)."""


class CrashingExecutor(Executor):
    """An executor that dies right after running a step of kind ``after``."""

    def __init__(self, slots: SlotStore, fetcher: Fetcher, runtime: ModelRuntime, *, after: type) -> None:
        super().__init__(slots, fetcher, runtime)
        self.after = after

    def execute(self, step: Step, run: Run) -> Outcome | None:
        outcome = super().execute(step, run)
        if isinstance(step, self.after):
            raise SimulatedCrash(type(step).__name__)
        return outcome


def _converge(*devices: Device, rounds: int = 3) -> None:
    for _ in range(rounds):
        for d in devices:
            d.agent.step()


def _deployment(http: httpx.Client, deployment_id: str) -> dict[str, object]:
    r = http.get(f"/v1/deployments/{deployment_id}", headers=ADMIN)
    assert r.status_code == 200, r.text
    body: dict[str, object] = r.json()
    return body


def _states(http: httpx.Client, deployment_id: str) -> dict[str, str]:
    devices = _deployment(http, deployment_id)["devices"]
    assert isinstance(devices, list)
    return {t["device_id"]: t["state"] for t in devices}


@pytest.fixture
def serving(controller: Live, http: httpx.Client, tmp_path: Path) -> tuple[Device, str]:
    """A device that converged on y = x + 1 (model v1)."""
    dev = enrolled_device(controller[0].url, http, tmp_path / "agent")
    model_id, version = upload_onnx(http, add_model(1.0))
    dep = deploy(http, model_id, version, [dev.id])
    dev.agent.step()
    assert _states(http, dep) == {dev.id: "succeeded"}
    return dev, model_id


def test_agent_converges_polls_with_etag_and_serves_inference(
    controller: Live, http: httpx.Client, serving: tuple[Device, str]
) -> None:
    dev, model_id = serving
    seen = dev.link.not_modified

    assert dev.agent.step() is None  # nothing changed: 304, no steps
    assert dev.link.not_modified == seen + 1

    server = make_server(dev.agent.runtime, "127.0.0.1", 0)
    serve_in_thread(server)
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        assert json.load(urllib.request.urlopen(f"{base}/healthz"))["model_loaded"] is True
        info = json.load(urllib.request.urlopen(f"{base}/v1/model"))
        assert (info["model_id"], info["version"]) == (model_id, 1)
        req = urllib.request.Request(
            f"{base}/v1/infer",
            data=json.dumps({"inputs": {"x": [[1, 2, 3, 4]]}}).encode(),
            headers={"Content-Type": "application/json"},
        )
        assert json.load(urllib.request.urlopen(req))["outputs"] == {"y": [[2.0, 3.0, 4.0, 5.0]]}
    finally:
        server.shutdown()
    row = {d["id"]: d for d in http.get("/v1/devices", headers=ADMIN).json()}[dev.id]
    assert (row["online"], row["model_id"], row["model_version"]) == (True, model_id, 1)


def test_tampered_artifact_is_refused_and_the_old_model_kept(
    controller: Live, http: httpx.Client, serving: tuple[Device, str]
) -> None:
    dev, model_id = serving
    _, v2 = upload_onnx(http, add_model(2.0), model_id)
    state = controller[1]
    mv = state.registry.resolve_version(model_id, v2)
    stored = next(Path(state.settings.data_dir).rglob(mv.object_key))
    stored.write_bytes(add_model(5.0))  # the store now differs from the chain record

    dep = deploy(http, model_id, v2, [dev.id])
    outcome = dev.agent.step()

    assert outcome is not None and outcome.state == "rejected"
    assert "409" in (outcome.error or "")
    assert _states(http, dep) == {dev.id: "rejected"}
    assert dev.agent.runtime.infer({"x": [[0, 0, 0, 0]]}) == {"y": [[1.0, 1.0, 1.0, 1.0]]}


def test_agent_checks_the_signed_hash_against_the_downloaded_bytes(
    controller: Live, http: httpx.Client, serving: tuple[Device, str]
) -> None:
    dev, model_id = serving
    _, v2 = upload_onnx(http, add_model(2.0), model_id)
    deploy(http, model_id, v2, [dev.id])  # so that the device may download v2
    fleet = controller[1].fleet
    assert fleet is not None
    payload = fleet.desired_payload(dev.id)
    payload["model"]["sha256"] = "ab" * 32  # a signed record that does not match the bytes served
    envelope = fleet.ca.sign_document(payload)

    desired = Desired.from_payload(verify_desired_state(envelope, dev.identity.ca_certificate, dev.id))
    assert dev.agent.executor is not None
    outcome = dev.agent.executor.apply(plan(dev.agent.slots.current(), desired), desired)

    assert outcome is not None and outcome.state == "rejected"
    assert "differs from the signed chain record" in (outcome.error or "")
    assert dev.agent.slots.current().active is not None
    assert dev.agent.slots.current().active.version == 1  # type: ignore[union-attr]
    assert not dev.agent.slots.path(desired.model).exists()  # type: ignore[arg-type]


def test_forged_or_misaddressed_desired_state_is_refused(
    controller: Live, http: httpx.Client, tmp_path: Path
) -> None:
    from controller.fleet.ca import DeviceCA

    dev = enrolled_device(controller[0].url, http, tmp_path / "a")
    fleet = controller[1].fleet
    assert fleet is not None
    payload = fleet.desired_payload(dev.id)
    rogue = DeviceCA.load_or_create(tmp_path / "rogue-ca")

    with pytest.raises(SignatureInvalid, match="does not verify"):
        verify_desired_state(rogue.sign_document(payload), dev.identity.ca_certificate, dev.id)
    with pytest.raises(SignatureInvalid, match="not 00000000"):
        verify_desired_state(fleet.ca.sign_document(payload), dev.identity.ca_certificate, "0" * 8)


def test_failed_health_check_rolls_back_to_the_previous_slot(
    controller: Live, http: httpx.Client, serving: tuple[Device, str]
) -> None:
    dev, model_id = serving
    _, v2 = upload_onnx(http, failing_model(), model_id)

    dep = deploy(http, model_id, v2, [dev.id])
    outcome = dev.agent.step()

    assert outcome is not None and outcome.state == "failed-rolled-back"
    assert _states(http, dep) == {dev.id: "failed-rolled-back"}
    current = dev.agent.slots.current()
    assert current.active is not None and current.active.version == 1
    assert dev.agent.runtime.infer({"x": [[1, 1, 1, 1]]}) == {"y": [[2.0, 2.0, 2.0, 2.0]]}
    assert dev.agent.step() is None  # the failed version is not retried
    row = http.get(f"/v1/devices/{dev.id}", headers=ADMIN).json()
    assert "health check failed" in row["last_error"]


def test_agent_killed_mid_swap_serves_the_previous_model_on_restart(
    controller: Live, http: httpx.Client, serving: tuple[Device, str]
) -> None:
    dev, model_id = serving
    _, v2 = upload_onnx(http, add_model(2.0), model_id)
    deploy(http, model_id, v2, [dev.id])
    crashing = Agent(dev.state_dir, dev.link)
    crashing.executor = CrashingExecutor(crashing.slots, dev.link, crashing.runtime, after=Activate)
    crashing.start()

    with pytest.raises(SimulatedCrash):
        crashing.step()  # dies after the 'current' pointer moved, before the health check
    assert crashing.slots.read("current")["version"] == v2  # type: ignore[index]

    restarted = Agent(dev.state_dir, dev.link)
    restarted.start()

    assert restarted.slots.current().active.version == 1  # type: ignore[union-attr]
    assert restarted.runtime.infer({"x": [[0, 0, 0, 0]]}) == {"y": [[1.0, 1.0, 1.0, 1.0]]}


def test_failing_canary_stops_the_rollout_and_rolls_the_canary_back(
    controller: Live, http: httpx.Client, tmp_path: Path
) -> None:
    url = controller[0].url
    canary = enrolled_device(url, http, tmp_path / "c", ring="waves")
    rest = enrolled_device(url, http, tmp_path / "r", ring="waves")
    model_id, v1 = upload_onnx(http, add_model(1.0))
    first = deploy(http, model_id, v1, [], selector={"ring": "waves"})
    _converge(canary, rest, rounds=1)
    assert _deployment(http, first)["state"] == "succeeded"
    _, v2 = upload_onnx(http, failing_model(), model_id)

    dep = deploy(http, model_id, v2, [canary.id, rest.id], strategy={"waves": [0.5, 1.0]})
    _converge(canary, rest, rounds=2)

    body = _deployment(http, dep)
    assert body["state"] == "failed"
    assert "wave 0" in str(body["error"])
    assert _states(http, dep) == {canary.id: "failed-rolled-back", rest.id: "cancelled"}
    for d in (canary, rest):
        desired = http.get(f"/v1/devices/{d.id}", headers=ADMIN).json()["desired"]
        assert (desired["model_id"], desired["version"]) == (model_id, v1)
        assert d.agent.runtime.active is not None and d.agent.runtime.active.version == v1


def test_waves_roll_out_one_after_another(controller: Live, http: httpx.Client, tmp_path: Path) -> None:
    devices = [enrolled_device(controller[0].url, http, tmp_path / f"w{i}") for i in range(2)]
    model_id, v1 = upload_onnx(http, add_model(1.0))

    dep = deploy(http, model_id, v1, [d.id for d in devices], strategy={"waves": [0.5, 1.0]})
    waves = {t["device_id"]: t["wave"] for t in _deployment(http, dep)["devices"]}  # type: ignore[union-attr]
    states = _states(http, dep)
    assert sorted(states.values()) == ["pending", "waiting"]
    _converge(*devices, rounds=2)

    assert _deployment(http, dep)["state"] == "succeeded"
    assert sorted(waves.values()) == [0, 1]


def test_deploying_a_non_onnx_version_is_422(controller: Live, http: httpx.Client, tmp_path: Path) -> None:
    dev = enrolled_device(controller[0].url, http, tmp_path / "x")
    model_id, _ = upload_onnx(http, add_model(1.0))
    r = http.put(f"/v1/models/{model_id}/artifact", headers=ADMIN, content=b"weights")
    assert r.status_code == 201

    r = http.post(
        "/v1/deployments", headers=ADMIN, json={"model_id": model_id, "version": 2, "device_ids": [dev.id]}
    )

    assert r.status_code == 422
    assert "not ONNX" in r.json()["detail"]
