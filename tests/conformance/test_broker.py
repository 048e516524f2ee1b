"""One Broker conformance suite, run against every implementation: the embedded amqtt broker (device-signed
JWT credentials) and a real Mosquitto (mTLS, CRL, ACL), each behind a live controller with real agents.

Backend-specific tests stay with their backend: ``tests/e2e/test_broker_embedded.py`` (JWT credential
and client-id checks) and ``tests/e2e/test_broker_mosquitto.py`` (offline outbox across a broker
restart)."""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from controller.chain.base import ChainBackend
from controller.fleet.broker.embedded import EmbeddedBroker
from controller.fleet.broker.messaging import FleetMessaging
from controller.state import ControllerState
from tests.conftest import LiveServer
from tests.e2e.broker_fixtures import MqttDevice, fleet_controller, mosquitto_controller, mqtt_device
from tests.e2e.helpers import ADMIN, add_model, deploy, failing_model, upload_onnx
from tests.fixtures.services import wait_for

Received = list[tuple[str, bytes]]


@dataclass
class BrokerFleet:
    """A live controller on one broker backend, and what differs between backends."""

    backend: str
    server: LiveServer
    state: ControllerState
    http: httpx.Client
    broker_url: str  # what enrolling devices are given
    # a plain MQTT client holding the device's credential (what a tampered agent could do), connected
    raw_client: Callable[[MqttDevice, Received], mqtt.Client]
    # the broker has refused a reconnect attempt of a revoked device
    refused: Callable[[MqttDevice], bool]
    # (device, seq, leaf) of every device message the controller accepted, in arrival order
    delivered: list[tuple[str, int, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.messaging.observe(lambda device_id, m: self.delivered.append((device_id, m.seq, m.kind)))

    @property
    def messaging(self) -> FleetMessaging:
        assert self.state.messaging is not None
        return self.state.messaging

    def status(self, deployment_id: str) -> dict[str, str]:
        body = self.http.get(f"/v1/deployments/{deployment_id}", headers=ADMIN).json()
        return {t["device_id"]: t["state"] for t in body["devices"]}

    def device(self, state_dir: Path, connect: bool = True) -> MqttDevice:
        return mqtt_device(self.server.url, self.http, state_dir, connect=connect)


def _recording_client(client_id: str, received: Received) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
    c.on_message = lambda _c, _u, msg: received.append((msg.topic, bytes(msg.payload)))
    return c


def _embedded(server: LiveServer, state: ControllerState, http: httpx.Client) -> BrokerFleet:
    assert state.messaging is not None and isinstance(state.messaging.broker, EmbeddedBroker)
    port = state.messaging.broker.port

    def raw_client(dev: MqttDevice, received: Received) -> mqtt.Client:
        c = _recording_client(dev.id, received)  # the broker requires client id = device id
        c.username_pw_set(dev.id, dev.identity.sign_jwt(60))
        c.connect("127.0.0.1", port)
        c.loop_start()
        return c

    return BrokerFleet(
        "embedded",
        server,
        state,
        http,
        f"mqtt://127.0.0.1:{port}",
        raw_client,
        refused=lambda dev: dev.mqtt.refused is not None,  # CONNACK "Not authorized" for its JWT
    )


@pytest.fixture(scope="module", params=["embedded", "mosquitto"])
def fleet(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, shared_evm: ChainBackend
) -> Iterator[BrokerFleet]:
    data_dir = tmp_path_factory.mktemp(f"broker-{request.param}")
    if request.param == "embedded":
        with (
            fleet_controller(data_dir, shared_evm) as (server, state),
            httpx.Client(base_url=server.url, timeout=30) as http,
        ):
            yield _embedded(server, state, http)
        return

    with (
        mosquitto_controller(data_dir, shared_evm) as (server, state, broker),
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):

        def raw_client(dev: MqttDevice, received: Received) -> mqtt.Client:
            c = _recording_client(f"{dev.id}-raw", received)
            ctx = ssl.create_default_context(cafile=str(dev.state_dir / "ca.pem"))
            ctx.load_cert_chain(str(dev.state_dir / "device.pem"), str(dev.state_dir / "device.key"))
            c.tls_set_context(ctx)
            c.connect("127.0.0.1", broker.port)
            c.loop_start()
            return c

        yield BrokerFleet(
            "mosquitto",
            server,
            state,
            http,
            f"mqtts://127.0.0.1:{broker.port}",
            raw_client,
            # its certificate is on the CRL: the TLS handshake fails
            refused=lambda _dev: "certificate verify failed" in broker.log(),
        )


def _close(raw: mqtt.Client) -> None:
    raw.disconnect()
    raw.loop_stop()


class TestBrokerConformance:
    def test_enrolled_device_connects_and_a_push_converges_before_the_next_poll(
        self, fleet: BrokerFleet, tmp_path: Path
    ) -> None:
        dev = fleet.device(tmp_path / "a").run(poll_interval=60)
        try:
            assert dev.identity.broker_url == fleet.broker_url
            time.sleep(0.5)  # the loop's first poll is done; the next one is a minute away
            model_id, version = upload_onnx(fleet.http, add_model(3.0))
            started = time.monotonic()

            dep = deploy(fleet.http, model_id, version, [dev.id])

            wait_for(lambda: fleet.status(dep) == {dev.id: "succeeded"}, 15, "push convergence")
            assert time.monotonic() - started < 15  # far below the 60 s poll interval
            assert dev.agent.runtime.infer({"x": [[0, 0, 0, 0]]}) == {"y": [[3.0, 3.0, 3.0, 3.0]]}
            wait_for(lambda: len(dev.outbox) == 0, 10, "state reports delivered over MQTT")
            delivered = [k for d, _, k in fleet.delivered if d == dev.id]
            assert delivered == ["state", "state"]  # applying, succeeded
        finally:
            dev.close()

    def test_a_device_cannot_use_another_devices_topics(self, fleet: BrokerFleet, tmp_path: Path) -> None:
        a = fleet.device(tmp_path / "a", connect=False)
        b = fleet.device(tmp_path / "b", connect=False)
        received: Received = []
        raw = fleet.raw_client(a, received)
        try:
            wait_for(raw.is_connected, 10, "raw client connected")
            raw.subscribe(f"fedge/devices/{b.id}/desired", qos=1)
            raw.subscribe("fedge/devices/+/desired", qos=1)
            raw.subscribe(f"fedge/devices/{a.id}/desired", qos=1)
            body = json.dumps({"seq": 10**9, "kind": "state", "body": {"state": "succeeded"}})
            raw.publish(f"fedge/devices/{b.id}/state", body, qos=1).wait_for_publish(5)
            raw.publish(f"fedge/devices/{a.id}/desired", b"{}", qos=1).wait_for_publish(5)

            wait_for(lambda: any(t.endswith(f"{a.id}/desired") for t, _ in received), 10, "own desired")
            time.sleep(1)
            assert {t for t, _ in received} == {f"fedge/devices/{a.id}/desired"}
            # the signed envelope, untouched by the device's publish
            assert all(json.loads(p).get("payload") for _, p in received)
            assert all(d != b.id for d, _, _ in fleet.delivered)
        finally:
            _close(raw)
            for d in (a, b):
                d.close()

    def test_connecting_does_not_deliver_other_devices_retained_desired_states(
        self, fleet: BrokerFleet, tmp_path: Path
    ) -> None:
        """amqtt 0.12.1 sent every retained message of every filter any client had subscribed to, on
        each CONNECT (fixed in ``_FleetAmqttBroker``); no backend may hand a device another's state."""
        b = fleet.device(tmp_path / "b")  # connected: subscribed to its own retained desired state
        a = fleet.device(tmp_path / "a", connect=False)
        received: Received = []
        raw = fleet.raw_client(a, received)
        try:
            wait_for(raw.is_connected, 10, "raw client connected")
            raw.subscribe(f"fedge/devices/{a.id}/desired", qos=1)

            wait_for(lambda: len(received) > 0, 10, "own desired state")
            time.sleep(1)
            assert [t for t, _ in received] == [f"fedge/devices/{a.id}/desired"]
            assert b.mqtt.connected.is_set()
        finally:
            _close(raw)
            for d in (a, b):
                d.close()

    def test_revoked_device_is_disconnected_and_refused_within_seconds(
        self, fleet: BrokerFleet, tmp_path: Path
    ) -> None:
        dev = fleet.device(tmp_path / "r")
        other = fleet.device(tmp_path / "o")
        try:
            assert fleet.http.delete(f"/v1/devices/{dev.id}", headers=ADMIN).status_code == 204

            waited = wait_for(lambda: not dev.mqtt.connected.is_set(), 5, "revoked device disconnected")
            assert waited < 5
            # it keeps retrying (1-2 s backoff): each attempt is refused
            wait_for(lambda: fleet.refused(dev), 15, "a reconnect attempt refused")
            time.sleep(1.0)
            assert not dev.mqtt.connected.is_set()
            assert other.mqtt.connected.is_set()
            with pytest.raises(Exception, match="401"):
                dev.agent.link.poll()
        finally:
            dev.close()
            other.close()

    def test_inference_over_the_mqtt_request_response_topics(
        self, fleet: BrokerFleet, tmp_path: Path
    ) -> None:
        from edge_agent.runtime.hooks import InferenceService

        dev = fleet.device(tmp_path / "inf", connect=False)
        dev.mqtt.on_infer = InferenceService(dev.agent.runtime).handle
        dev.mqtt.start()
        wait_for(dev.mqtt.connected.is_set, 10, "device connected")
        dev.run(poll_interval=60)
        try:
            model_id, version = upload_onnx(fleet.http, add_model(2.0))
            deploy(fleet.http, model_id, version, [dev.id])
            wait_for(lambda: dev.agent.runtime.active is not None, 15, "model active")
            broker = fleet.messaging.broker
            answers: list[dict[str, object]] = []
            broker.subscribe(
                f"fedge/devices/{dev.id}/inferred", lambda _t, payload: answers.append(json.loads(payload))
            )
            time.sleep(0.3)
            topic = f"fedge/devices/{dev.id}/infer"
            assert broker.publish(topic, json.dumps({"id": "r1", "inputs": {"x": [[1, 2, 3, 4]]}}).encode())
            assert broker.publish(topic, json.dumps({"id": "r2", "inputs": {"nope": []}}).encode())
            wait_for(lambda: len(answers) == 2, 10, "two answers")
            by_id = {a["id"]: a for a in answers}
            assert by_id["r1"]["outputs"] == {"y": [[3.0, 4.0, 5.0, 6.0]]}
            assert "missing input 'x'" in str(by_id["r2"]["error"])
        finally:
            dev.close()

    def test_rollback_and_tamper_refusal_pushed_over_mqtt(self, fleet: BrokerFleet, tmp_path: Path) -> None:
        dev = fleet.device(tmp_path / "rb").run(poll_interval=60)
        try:
            time.sleep(0.5)
            model_id, v1 = upload_onnx(fleet.http, add_model(1.0))
            first = deploy(fleet.http, model_id, v1, [dev.id])
            wait_for(lambda: fleet.status(first) == {dev.id: "succeeded"}, 15, "first model by push")

            _, v2 = upload_onnx(fleet.http, failing_model(), model_id)
            bad = deploy(fleet.http, model_id, v2, [dev.id])
            wait_for(lambda: fleet.status(bad) == {dev.id: "failed-rolled-back"}, 15, "rollback reported")
            assert dev.agent.runtime.infer({"x": [[0, 0, 0, 0]]}) == {"y": [[1.0, 1.0, 1.0, 1.0]]}

            _, v3 = upload_onnx(fleet.http, add_model(3.0), model_id)
            mv = fleet.state.registry.resolve_version(model_id, v3)
            next(Path(fleet.state.settings.data_dir).rglob(mv.object_key)).write_bytes(add_model(9.0))
            tampered = deploy(fleet.http, model_id, v3, [dev.id])
            wait_for(lambda: fleet.status(tampered) == {dev.id: "rejected"}, 15, "tampered model refused")
            assert dev.agent.runtime.infer({"x": [[0, 0, 0, 0]]}) == {"y": [[1.0, 1.0, 1.0, 1.0]]}
            wait_for(lambda: len(dev.outbox) == 0, 10, "reports delivered over MQTT")
        finally:
            dev.close()
