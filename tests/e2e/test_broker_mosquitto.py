"""What only the real Mosquitto (mTLS, ACL, CRL) run as its own process allows: the offline outbox across a
broker restart. The behaviour both brokers share (push convergence, the topic ACL, retained desired states,
revocation, inference topics, rollback) is in ``tests/conformance/test_broker.py``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from controller.state import ControllerState
from tests.conftest import LiveServer
from tests.e2e.broker_fixtures import MosquittoServer, mosquitto_fleet, mqtt_device
from tests.e2e.helpers import ADMIN, add_model, deploy, upload_onnx
from tests.fixtures.services import wait_for

__all__ = ["mosquitto_fleet"]
Fleet = tuple[LiveServer, ControllerState, MosquittoServer]


@pytest.fixture(scope="module")
def fleet_http(mosquitto_fleet: Fleet) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=mosquitto_fleet[0].url, timeout=30) as client:
        yield client


def _status(http: httpx.Client, deployment_id: str) -> dict[str, str]:
    body = http.get(f"/v1/deployments/{deployment_id}", headers=ADMIN).json()
    return {t["device_id"]: t["state"] for t in body["devices"]}


def test_offline_outbox_and_broker_restart(
    mosquitto_fleet: Fleet, fleet_http: httpx.Client, tmp_path: Path
) -> None:
    server, state, broker = mosquitto_fleet
    assert state.messaging is not None
    delivered: list[tuple[str, int, str]] = []  # (device, seq, leaf) as the controller accepted them
    state.messaging.observe(lambda device_id, m: delivered.append((device_id, m.seq, m.kind)))
    dev = mqtt_device(server.url, fleet_http, tmp_path / "off").run(poll_interval=60)
    try:
        model_id, v1 = upload_onnx(fleet_http, add_model(1.0))
        dep = deploy(fleet_http, model_id, v1, [dev.id])
        wait_for(lambda: _status(fleet_http, dep) == {dev.id: "succeeded"}, 15, "first convergence")
        wait_for(lambda: len(dev.outbox) == 0, 10, "outbox drained")

        broker.stop()
        wait_for(lambda: not dev.mqtt.connected.is_set(), 5, "agent noticed the broker is gone")
        seqs = [dev.agent.record_telemetry({"temp": 40 + i}) for i in range(3)]
        seqs.append(dev.outbox.append("state", {"state": "succeeded", "deployment_id": dep, "error": None}))
        dev.agent.wake()
        time.sleep(1.5)
        assert [e.seq for e in dev.outbox.pending()] == seqs  # nothing lost, nothing sent, in order
        assert dev.agent.runtime.infer({"x": [[1, 1, 1, 1]]}) == {"y": [[2.0, 2.0, 2.0, 2.0]]}

        broker.start()
        wait_for(lambda: len(dev.outbox) == 0, 20, "outbox delivered after the broker came back")

        def mine() -> list[tuple[int, str]]:
            return [(seq, kind) for d, seq, kind in delivered if d == dev.id and seq >= seqs[0]]

        expected = [
            (seqs[0], "telemetry"),
            (seqs[1], "telemetry"),
            (seqs[2], "telemetry"),
            (seqs[3], "state"),
        ]

        def temps() -> list[int]:
            items = fleet_http.get(f"/v1/devices/{dev.id}/telemetry", headers=ADMIN).json()["items"]
            return [t["body"]["temp"] for t in items if "temp" in t["body"]]

        wait_for(lambda: len(mine()) >= 4, 10, "the controller received the outbox")
        assert mine() == expected  # in order, once each
        assert fleet_http.get(f"/v1/devices/{dev.id}", headers=ADMIN).json()["reported"]["seq"] == seqs[3]
        assert temps() == [40, 41, 42]

        assert dev.mqtt.publish("telemetry", seqs[1], {"temp": 99})  # a redelivery: acknowledged, dropped
        time.sleep(0.5)
        assert temps() == [40, 41, 42]

        _, v2 = upload_onnx(fleet_http, add_model(2.0), model_id)
        dep2 = deploy(fleet_http, model_id, v2, [dev.id])  # after the restart: pushed again, no poll due
        wait_for(lambda: _status(fleet_http, dep2) == {dev.id: "succeeded"}, 15, "re-convergence")
        assert dev.agent.runtime.infer({"x": [[0, 0, 0, 0]]}) == {"y": [[2.0, 2.0, 2.0, 2.0]]}
    finally:
        if broker.proc is None:
            broker.start()
        dev.close()
