"""MQTT against a real Mosquitto (mTLS, ACL, CRL) and the real controller: push convergence, the
per-device ACL, revocation, the offline outbox and a broker restart."""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from controller.state import ControllerState
from tests.conftest import LiveServer
from tests.fixtures.services import wait_for
from tests.fleet.broker_fixtures import MosquittoServer, MqttDevice, mosquitto_fleet, mqtt_device
from tests.fleet.helpers import ADMIN, add_model, deploy, upload_onnx

__all__ = ["mosquitto_fleet"]
Fleet = tuple[LiveServer, ControllerState, MosquittoServer]


@pytest.fixture(scope="module")
def fleet_http(mosquitto_fleet: Fleet) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=mosquitto_fleet[0].url, timeout=30) as client:
        yield client


def _raw_client(dev: MqttDevice, port: int, received: list[tuple[str, bytes]]) -> mqtt.Client:
    """A plain MQTT client holding the device's certificate (what a tampered agent could do)."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{dev.id}-raw", protocol=mqtt.MQTTv311)
    ctx = ssl.create_default_context(cafile=str(dev.state_dir / "ca.pem"))
    ctx.load_cert_chain(str(dev.state_dir / "device.pem"), str(dev.state_dir / "device.key"))
    c.tls_set_context(ctx)
    c.on_message = lambda _c, _u, msg: received.append((msg.topic, bytes(msg.payload)))
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


def _status(http: httpx.Client, deployment_id: str) -> dict[str, str]:
    body = http.get(f"/v1/deployments/{deployment_id}", headers=ADMIN).json()
    return {t["device_id"]: t["state"] for t in body["devices"]}


def test_enrolled_certificate_connects_and_a_push_converges_before_the_next_poll(
    mosquitto_fleet: Fleet, fleet_http: httpx.Client, tmp_path: Path
) -> None:
    server, _, broker = mosquitto_fleet
    dev = mqtt_device(server.url, fleet_http, tmp_path / "a").run(poll_interval=60)
    try:
        assert dev.identity.broker_url == f"mqtts://127.0.0.1:{broker.port}"
        time.sleep(0.5)  # the loop's first poll is done; the next one is a minute away
        model_id, version = upload_onnx(fleet_http, add_model(1.0))
        started = time.monotonic()

        dep = deploy(fleet_http, model_id, version, [dev.id])

        wait_for(lambda: _status(fleet_http, dep) == {dev.id: "succeeded"}, 15, "push convergence")
        assert time.monotonic() - started < 15  # far below the 60 s poll interval
        assert dev.agent.runtime.infer({"x": [[0, 0, 0, 0]]}) == {"y": [[1.0, 1.0, 1.0, 1.0]]}
    finally:
        dev.close()


def test_a_device_cannot_use_another_devices_topics(
    mosquitto_fleet: Fleet, fleet_http: httpx.Client, tmp_path: Path
) -> None:
    server, state, broker = mosquitto_fleet
    a = mqtt_device(server.url, fleet_http, tmp_path / "a", connect=False)
    b = mqtt_device(server.url, fleet_http, tmp_path / "b", connect=False)
    received: list[tuple[str, bytes]] = []
    raw = _raw_client(a, broker.port, received)
    try:
        wait_for(raw.is_connected, 10, "raw client connected")
        raw.subscribe(f"fedge/devices/{b.id}/desired", qos=1)
        raw.subscribe("fedge/devices/+/desired", qos=1)
        raw.subscribe(f"fedge/devices/{a.id}/desired", qos=1)
        body = json.dumps({"seq": 10**9, "kind": "state", "body": {"state": "succeeded"}})
        raw.publish(f"fedge/devices/{b.id}/state", body, qos=1).wait_for_publish(5)
        raw.publish(f"fedge/devices/{a.id}/desired", b"{}", qos=1).wait_for_publish(5)

        wait_for(lambda: any(t.endswith(f"{a.id}/desired") for t, _ in received), 10, "own desired state")
        time.sleep(1)
        assert {t for t, _ in received} == {f"fedge/devices/{a.id}/desired"}
        assert json.loads(received[0][1])["payload"]  # the signed envelope, untouched by the publish
        assert state.messaging is not None
        assert all(d != b.id for d, _, _ in state.messaging.delivered)
    finally:
        raw.disconnect()
        raw.loop_stop()
        for d in (a, b):
            d.close()


def test_revoked_device_is_disconnected_and_refused_within_seconds(
    mosquitto_fleet: Fleet, fleet_http: httpx.Client, tmp_path: Path
) -> None:
    server, _, broker = mosquitto_fleet
    dev = mqtt_device(server.url, fleet_http, tmp_path / "r")
    other = mqtt_device(server.url, fleet_http, tmp_path / "o")
    try:
        r = fleet_http.delete(f"/v1/devices/{dev.id}", headers=ADMIN)
        assert r.status_code == 204

        waited = wait_for(lambda: not dev.mqtt.connected.is_set(), 5, "revoked device disconnected")
        assert waited < 5
        time.sleep(3)  # it keeps retrying (1-2 s backoff): the TLS handshake fails every time
        assert not dev.mqtt.connected.is_set()
        assert "certificate verify failed" in broker.log()
        assert other.mqtt.connected.is_set()
        with pytest.raises(Exception, match="401"):
            dev.agent.link.poll()
    finally:
        dev.close()
        other.close()


def test_offline_outbox_and_broker_restart(
    mosquitto_fleet: Fleet, fleet_http: httpx.Client, tmp_path: Path
) -> None:
    server, state, broker = mosquitto_fleet
    assert state.messaging is not None
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
            return [
                (seq, kind) for d, seq, kind in state.messaging.delivered if d == dev.id and seq >= seqs[0]
            ]

        expected = [
            (seqs[0], "telemetry"),
            (seqs[1], "telemetry"),
            (seqs[2], "telemetry"),
            (seqs[3], "state"),
        ]
        wait_for(lambda: len(mine()) >= 4, 10, "the controller received the outbox")
        assert mine() == expected  # in order, once each
        assert fleet_http.get(f"/v1/devices/{dev.id}", headers=ADMIN).json()["reported"]["seq"] == seqs[3]
        assert [t["temp"] for t in state.messaging.telemetry[dev.id]] == [40, 41, 42]

        assert dev.mqtt.publish("telemetry", seqs[1], {"temp": 99})  # a redelivery: acknowledged, dropped
        time.sleep(0.5)
        assert [t["temp"] for t in state.messaging.telemetry[dev.id]] == [40, 41, 42]

        _, v2 = upload_onnx(fleet_http, add_model(2.0), model_id)
        dep2 = deploy(fleet_http, model_id, v2, [dev.id])  # after the restart: pushed again, no poll due
        wait_for(lambda: _status(fleet_http, dep2) == {dev.id: "succeeded"}, 15, "re-convergence")
        assert dev.agent.runtime.infer({"x": [[0, 0, 0, 0]]}) == {"y": [[2.0, 2.0, 2.0, 2.0]]}
    finally:
        if broker.proc is None:
            broker.start()
        dev.close()


def test_rollback_and_tamper_refusal_pushed_over_mosquitto(
    mosquitto_fleet: Fleet, fleet_http: httpx.Client, tmp_path: Path
) -> None:
    from tests.fleet.helpers import failing_model

    server, state, _ = mosquitto_fleet
    dev = mqtt_device(server.url, fleet_http, tmp_path / "rb").run(poll_interval=60)
    try:
        time.sleep(0.5)
        model_id, v1 = upload_onnx(fleet_http, add_model(1.0))
        first = deploy(fleet_http, model_id, v1, [dev.id])
        wait_for(lambda: _status(fleet_http, first) == {dev.id: "succeeded"}, 15, "first model by push")

        _, v2 = upload_onnx(fleet_http, failing_model(), model_id)
        bad = deploy(fleet_http, model_id, v2, [dev.id])
        wait_for(lambda: _status(fleet_http, bad) == {dev.id: "failed-rolled-back"}, 15, "rollback reported")
        assert dev.agent.runtime.infer({"x": [[0, 0, 0, 0]]}) == {"y": [[1.0, 1.0, 1.0, 1.0]]}

        _, v3 = upload_onnx(fleet_http, add_model(3.0), model_id)
        mv = state.registry.resolve_version(model_id, v3)
        next(Path(state.settings.data_dir).rglob(mv.object_key)).write_bytes(add_model(9.0))
        tampered = deploy(fleet_http, model_id, v3, [dev.id])
        wait_for(lambda: _status(fleet_http, tampered) == {dev.id: "rejected"}, 15, "tampered model refused")
        assert dev.agent.runtime.infer({"x": [[0, 0, 0, 0]]}) == {"y": [[1.0, 1.0, 1.0, 1.0]]}
        wait_for(lambda: len(dev.outbox) == 0, 10, "reports delivered over MQTT")
    finally:
        dev.close()
