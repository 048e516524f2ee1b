"""MQTT link (paho-mqtt 2.x, MQTT 3.1.1): push of the signed desired state and delivery of the outbox.

``mqtts://`` brokers (Mosquitto): mTLS with the device key and certificate, the broker's certificate
checked against the CA pinned at enrollment. ``mqtt://`` brokers (the controller's embedded one):
username = device id, password = a fresh device-signed JWT at every (re)connect. The client id is the
device id. Reconnects back off exponentially (``min_backoff`` .. ``max_backoff``). A pushed desired
state is verified exactly like a polled one before anything acts on it.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.identity import CA_FILE, CERT_FILE, KEY_FILE, DeviceIdentity
from edge_agent.link.signed import SignatureInvalid, verify_command, verify_desired_state
from edge_agent.process import Service
from fedge_protocol.documents import OutboxMessage
from fedge_protocol.topics import Leaf, device_topic, split_device_topic

log = logging.getLogger("fedge.agent.mqtt")


class MqttLink(Service):
    """One device's connection to the fleet broker (a service of the agent process: paho's network
    thread reconnects by itself, so a broker that is down does not make it unhealthy)."""

    name = "mqtt"

    def __init__(
        self,
        identity: DeviceIdentity,
        state_dir: Path,
        on_desired: Callable[[dict[str, Any]], None],
        *,
        url: str | None = None,
        on_connect: Callable[[], None] | None = None,
        min_backoff: int = 1,
        max_backoff: int = 30,
        token_ttl: int = 300,
        on_infer: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        on_command: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.on_infer = on_infer
        self.on_command = on_command
        target = url or identity.broker_url
        if not target:
            raise ValueError("no broker URL: the controller named none at enrollment")
        parts = urlsplit(target)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError(f"broker URL must be mqtt://host:port or mqtts://host:port, not {target!r}")
        self.identity, self.on_desired, self.on_connect_cb = identity, on_desired, on_connect
        self.host, self.port = parts.hostname, parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        self.connected = threading.Event()
        self.refused: str | None = None  # the last CONNACK refusal, if any
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=identity.device_id, protocol=mqtt.MQTTv311
        )
        if parts.scheme == "mqtts":
            client.tls_set(
                ca_certs=str(state_dir / CA_FILE),
                certfile=str(state_dir / CERT_FILE),
                keyfile=str(state_dir / KEY_FILE),
            )
        else:
            ttl = token_ttl

            def fresh_token(c: mqtt.Client, _userdata: Any) -> None:
                c.username_pw_set(identity.device_id, identity.sign_jwt(ttl))

            client.on_pre_connect = fresh_token
            client.username_pw_set(identity.device_id, identity.sign_jwt(ttl))
        client.reconnect_delay_set(min_backoff, max_backoff)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self.client = client

    def _answer(self, payload: bytes) -> None:
        """Inference over MQTT: a request ``{"id", "inputs" | "image" | "images", ...}`` on ``.../infer``
        gets ``{"id", "outputs", ...}`` or ``{"id", "error"}`` on ``.../inferred`` (QoS 1)."""
        assert self.on_infer is not None
        request_id: Any = None
        try:
            request = json.loads(payload)
            if not isinstance(request, dict):
                raise ValueError("a request must be a JSON object")
            request_id = request.get("id")
            response = {"id": request_id, **self.on_infer(request)}
        except Exception as exc:  # any failure is the requester's answer, not the agent's crash
            response = {"id": request_id, "error": f"{type(exc).__name__}: {exc}"}
        self.client.publish(
            device_topic(self.identity.device_id, Leaf.INFERRED), json.dumps(response).encode(), qos=1
        )

    def start(self) -> None:
        self.client.connect_async(self.host, self.port, keepalive=30)
        self.client.loop_start()

    def reload_certificate(self, state_dir: Path) -> None:
        """After a certificate renewal: the next TLS handshake presents the new certificate (mqtts)."""
        context = getattr(self.client, "_ssl_context", None)  # set by tls_set; None without TLS
        if context is not None:
            context.load_cert_chain(str(state_dir / CERT_FILE), str(state_dir / KEY_FILE))

    def stop(self) -> None:
        self.connected.clear()  # first: a disconnect asked for here is not logged as a lost connection
        self.client.disconnect()
        self.client.loop_stop()

    def publish(self, kind: str, seq: int, body: dict[str, Any], timeout: float = 10.0) -> bool:
        """QoS 1 publish of one outbox entry; True once the broker's PUBACK arrived."""
        if not self.connected.is_set():
            return False
        message = OutboxMessage.model_validate({"seq": seq, "kind": kind, "body": body})
        payload = json.dumps(message.model_dump()).encode()
        info = self.client.publish(device_topic(self.identity.device_id, kind), payload, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return False
        try:
            info.wait_for_publish(timeout)
        except (RuntimeError, ValueError):
            return False
        return info.is_published()

    # ----------------------------------------------------------------- callbacks
    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            self.refused = str(rc)
            log.warning("broker refused the connection: %s", rc)
            return
        self.refused = None
        client.subscribe(device_topic(self.identity.device_id, Leaf.DESIRED), qos=1)
        client.subscribe(device_topic(self.identity.device_id, Leaf.CMD), qos=1)
        if self.on_infer is not None:
            client.subscribe(device_topic(self.identity.device_id, Leaf.INFER), qos=1)
        self.connected.set()
        log.info("connected to the broker %s:%s", self.host, self.port)
        if self.on_connect_cb is not None:
            self.on_connect_cb()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if self.connected.is_set():
            log.warning("disconnected from the broker (%s); reconnecting with backoff", rc)
        self.connected.clear()

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        found = split_device_topic(msg.topic)
        leaf = found[1] if found is not None and found[0] == self.identity.device_id else None
        if leaf == Leaf.INFER and self.on_infer is not None:
            threading.Thread(target=self._answer, args=(msg.payload,), daemon=True).start()
            return
        if leaf == Leaf.CMD and msg.payload:
            self._command(bytes(msg.payload))
            return
        if leaf != Leaf.DESIRED or not msg.payload:
            return
        try:
            payload = verify_desired_state(
                json.loads(msg.payload), self.identity.ca_certificate, self.identity.device_id
            )
        except (SignatureInvalid, ValueError) as exc:
            log.warning("ignoring a pushed desired state: %s", exc)
            return
        self.on_desired(payload)

    def _command(self, raw: bytes) -> None:
        """A pushed command, verified (signature, type, device) before it is handed on."""
        if self.on_command is None:
            return
        try:
            payload = verify_command(json.loads(raw), self.identity.ca_certificate, self.identity.device_id)
        except (SignatureInvalid, ValueError) as exc:
            log.warning("ignoring a pushed command: %s", exc)
            return
        self.on_command(payload)
