"""What only the embedded broker (amqtt inside the controller, the default) does: device-signed JWT
credentials with client id = device id. The behaviour both brokers share (push convergence, the topic ACL,
retained desired states, revocation, inference topics, rollback) is in ``tests/conformance/test_broker.py``."""

from __future__ import annotations

from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from controller.state import ControllerState
from tests.conftest import LiveServer
from tests.e2e.broker_fixtures import MqttDevice, mqtt_device
from tests.e2e.helpers import ADMIN

Live = tuple[LiveServer, ControllerState]


def _port(dev: MqttDevice) -> int:
    return dev.mqtt.port


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
