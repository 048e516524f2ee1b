"""MQTT against the embedded broker (amqtt inside the controller, the default): device-signed JWT
credentials, the per-device topic ACL, push convergence and revocation."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from controller.state import ControllerState
from tests.conftest import LiveServer
from tests.fixtures.services import wait_for
from tests.fleet.broker_fixtures import MqttDevice, mqtt_device
from tests.fleet.helpers import ADMIN, add_model, deploy, upload_onnx

Live = tuple[LiveServer, ControllerState]


def _raw_client(dev: MqttDevice, port: int, received: list[tuple[str, bytes]], client_id: str) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
    c.username_pw_set(dev.id, dev.identity.sign_jwt(60))
    c.on_message = lambda _c, _u, msg: received.append((msg.topic, bytes(msg.payload)))
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


def _port(dev: MqttDevice) -> int:
    return dev.mqtt.port


def test_jwt_credential_connects_and_a_push_converges_before_the_next_poll(
    controller: Live, http: httpx.Client, tmp_path: Path
) -> None:
    dev = mqtt_device(controller[0].url, http, tmp_path / "e").run(poll_interval=60)
    try:
        assert (dev.identity.broker_url or "").startswith("mqtt://127.0.0.1:")
        time.sleep(0.5)
        model_id, version = upload_onnx(http, add_model(3.0))

        dep = deploy(http, model_id, version, [dev.id])

        def states() -> dict[str, str]:
            return {
                t["device_id"]: t["state"]
                for t in http.get(f"/v1/deployments/{dep}", headers=ADMIN).json()["devices"]
            }

        wait_for(lambda: states() == {dev.id: "succeeded"}, 15, "push convergence")
        assert dev.agent.runtime.infer({"x": [[0, 0, 0, 0]]}) == {"y": [[3.0, 3.0, 3.0, 3.0]]}
        wait_for(lambda: len(dev.outbox) == 0, 10, "state reports delivered over MQTT")
        messaging = controller[1].messaging
        assert messaging is not None
        assert [k for d, _, k in messaging.delivered if d == dev.id] == [
            "state",
            "state",
        ]  # applying, succeeded
    finally:
        dev.close()


def test_a_device_cannot_use_another_devices_topics(
    controller: Live, http: httpx.Client, tmp_path: Path
) -> None:
    a = mqtt_device(controller[0].url, http, tmp_path / "a", connect=False)
    b = mqtt_device(controller[0].url, http, tmp_path / "b", connect=False)
    received: list[tuple[str, bytes]] = []
    raw = _raw_client(a, _port(a), received, a.id)
    try:
        wait_for(raw.is_connected, 10, "raw client connected")
        raw.subscribe(f"fedge/devices/{b.id}/desired", qos=1)
        raw.subscribe(f"fedge/devices/{a.id}/desired", qos=1)
        body = json.dumps({"seq": 10**9, "kind": "state", "body": {"state": "succeeded"}})
        raw.publish(f"fedge/devices/{b.id}/state", body, qos=1)
        raw.publish(f"fedge/devices/{a.id}/desired", b"{}", qos=1)

        wait_for(lambda: any(t.endswith(f"{a.id}/desired") for t, _ in received), 10, "own desired state")
        time.sleep(1)
        assert {t for t, _ in received} == {f"fedge/devices/{a.id}/desired"}
        assert all(json.loads(p).get("payload") for _, p in received)
        messaging = controller[1].messaging
        assert messaging is not None
        assert all(d != b.id for d, _, _ in messaging.delivered)
    finally:
        raw.disconnect()
        raw.loop_stop()
        for d in (a, b):
            d.close()


def test_another_devices_credential_or_client_id_is_refused(
    controller: Live, http: httpx.Client, tmp_path: Path
) -> None:
    a = mqtt_device(controller[0].url, http, tmp_path / "a", connect=False)
    b = mqtt_device(controller[0].url, http, tmp_path / "b", connect=False)
    answers: list[str] = []

    def attempt(client_id: str, username: str, token: str) -> str:
        raw = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
        raw.username_pw_set(username, token)
        raw.on_connect = lambda _c, _u, _f, rc, _p: answers.append(str(rc))
        raw.connect("127.0.0.1", _port(a))
        for _ in range(20):
            raw.loop(timeout=0.1)
            if answers:
                break
        raw.disconnect()
        return answers.pop()

    try:
        assert attempt(b.id, b.id, a.identity.sign_jwt(60)) == "Not authorized"  # a's key, b's name
        assert attempt("someone-else", a.id, a.identity.sign_jwt(60)) == "Not authorized"  # wrong client id
        assert attempt(a.id, a.id, a.identity.sign_jwt(60)) == "Success"
    finally:
        for d in (a, b):
            d.close()


def test_revoked_device_is_disconnected_and_its_credential_refused(
    controller: Live, http: httpx.Client, tmp_path: Path
) -> None:
    dev = mqtt_device(controller[0].url, http, tmp_path / "r")
    try:
        assert http.delete(f"/v1/devices/{dev.id}", headers=ADMIN).status_code == 204

        wait_for(lambda: not dev.mqtt.connected.is_set(), 5, "revoked device disconnected")
        # it keeps retrying with fresh tokens (backoff 1-2 s): each attempt is refused
        wait_for(lambda: dev.mqtt.refused is not None, 15, "a reconnect attempt refused")
        time.sleep(1.0)
        assert not dev.mqtt.connected.is_set()
    finally:
        dev.close()


def test_a_redelivered_outbox_entry_counts_once_over_http_too(
    controller: Live, http: httpx.Client, tmp_path: Path
) -> None:
    dev = mqtt_device(controller[0].url, http, tmp_path / "h", connect=False)
    try:
        dev.agent.link.report({"state": "succeeded", "seq": 5})
        dev.agent.link.report({"state": "rejected", "seq": 5, "error": "replayed"})  # same entry again
        first = http.get(f"/v1/devices/{dev.id}", headers=ADMIN).json()
        dev.agent.link.report({"state": "rejected", "seq": 6, "error": "new"})
        second = http.get(f"/v1/devices/{dev.id}", headers=ADMIN).json()

        assert (first["reported"]["state"], first["reported"]["seq"]) == ("succeeded", 5)
        assert (second["reported"]["state"], second["reported"]["seq"]) == ("rejected", 6)
    finally:
        dev.close()


def test_inference_over_the_mqtt_request_response_topics(
    controller: Live, http: httpx.Client, tmp_path: Path
) -> None:
    from edge_agent.runtime.hooks import InferenceService

    dev = mqtt_device(controller[0].url, http, tmp_path / "inf", connect=False)
    dev.mqtt.on_infer = InferenceService(dev.agent.runtime).handle
    dev.mqtt.start()
    wait_for(dev.mqtt.connected.is_set, 10, "device connected")
    dev.run(poll_interval=60)
    try:
        model_id, version = upload_onnx(http, add_model(2.0))
        deploy(http, model_id, version, [dev.id])
        wait_for(lambda: dev.agent.runtime.active is not None, 15, "model active")
        messaging = controller[1].messaging
        assert messaging is not None
        answers: list[dict[str, object]] = []
        messaging.broker.subscribe(
            f"fedge/devices/{dev.id}/inferred", lambda _t, payload: answers.append(json.loads(payload))
        )
        time.sleep(0.3)
        topic = f"fedge/devices/{dev.id}/infer"
        assert messaging.broker.publish(topic, json.dumps({"id": "r1", "inputs": {"x": [[1, 2, 3, 4]]}}).encode())
        assert messaging.broker.publish(topic, json.dumps({"id": "r2", "inputs": {"nope": []}}).encode())
        wait_for(lambda: len(answers) == 2, 10, "two answers")
        by_id = {a["id"]: a for a in answers}
        assert by_id["r1"]["outputs"] == {"y": [[3.0, 4.0, 5.0, 6.0]]}
        assert "missing input 'x'" in str(by_id["r2"]["error"])
    finally:
        dev.close()
