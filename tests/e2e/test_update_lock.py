"""The update lock end to end: a deployment pushed while work holds the lock waits (the old model keeps
serving, nothing is swapped) and is applied as soon as the lock is released, without another poll."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from controller.state import ControllerState
from edge_agent.deploy.plan import ModelRef
from tests.conftest import LiveServer
from tests.e2e.broker_fixtures import MqttDevice, mqtt_device
from tests.e2e.helpers import ADMIN, add_model, deploy, upload_onnx
from tests.fixtures.services import wait_for

Live = tuple[LiveServer, ControllerState]


@pytest.fixture
def device(controller: Live, http: httpx.Client, tmp_path: Path) -> Iterator[MqttDevice]:
    """An agent with the embedded broker, its loop running with a poll interval longer than the test."""
    dev = mqtt_device(controller[0].url, http, tmp_path / "dev")
    dev.run(poll_interval=600)
    yield dev
    dev.close()


def _state(http: httpx.Client, deployment_id: str, device_id: str) -> str:
    devices = http.get(f"/v1/deployments/{deployment_id}", headers=ADMIN).json()["devices"]
    return str(next(t["state"] for t in devices if t["device_id"] == device_id))


def _active(dev: MqttDevice) -> tuple[str, int] | None:
    active = dev.agent.runtime.active
    return None if active is None else (active.model_id, active.version)


def test_a_deployment_pushed_while_the_update_lock_is_held_waits_and_applies_on_release(
    http: httpx.Client, device: MqttDevice
) -> None:
    model_id, v1 = upload_onnx(http, add_model(1.0))
    first = deploy(http, model_id, v1, [device.id])
    wait_for(lambda: _state(http, first, device.id) == "succeeded", 20, "v1 succeeded")
    _, v2 = upload_onnx(http, add_model(2.0), model_id)
    lock = device.agent.update_lock
    polls_before = device.agent.link.not_modified, device.agent.link.etag

    lock.acquire("grid-run test")
    try:
        second = deploy(http, model_id, v2, [device.id])
        wait_for(lambda: device.agent.deferred_revision is not None, 20, "the pushed state deferred")

        assert _active(device) == (model_id, v1)
        assert device.agent.runtime.infer({"x": [[0, 0, 0, 0]]}) == {"y": [[1.0, 1.0, 1.0, 1.0]]}
        current = device.agent.slots.current()
        assert current.active is not None and current.active.version == v1
        assert not any(ref.version == v2 for ref in current.installed)
        assert not device.agent.slots.path(ModelRef(model_id, v2, "")).parent.exists()
        assert _state(http, second, device.id) == "pending"
    finally:
        lock.release("grid-run test")

    wait_for(lambda: _active(device) == (model_id, v2), 20, "v2 active after the release")
    assert device.agent.runtime.infer({"x": [[0, 0, 0, 0]]}) == {"y": [[2.0, 2.0, 2.0, 2.0]]}
    wait_for(lambda: _state(http, second, device.id) == "succeeded", 20, "v2 reported succeeded")
    assert device.agent.deferred_revision is None
    assert (device.agent.link.not_modified, device.agent.link.etag) == polls_before  # applied, not polled
