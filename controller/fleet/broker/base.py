"""The ``Broker`` interface and the controller's own MQTT client (the service client) both brokers share.

The topics and the device ACL are the protocol's (:mod:`fedge_protocol.topics`); the service client
(``SERVICE_USER``) may do anything under ``fedge/``.

Several controller replicas on one broker (``ReplicaSession``): each connects with its own client id
(``fedge-controller-<replica>``, MQTT 5 with a session expiry) and takes the device messages through a
shared subscription (``$share/fedge-controller/<filter>``), so the broker hands each message to exactly one
replica; the broker queues a replica's share while it is away, for up to the session expiry.
"""

from __future__ import annotations

import functools
import logging
import ssl
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from controller.observability.events import MQTT_PUBLISHED, counted_publish, topic_leaf

log = logging.getLogger("fedge.broker")

SERVICE_USER = "fedge-controller"
SHARE_GROUP = SERVICE_USER
"""The shared-subscription group of every controller replica: ``$share/fedge-controller/<filter>``."""
MessageHandler = Callable[[str, bytes], None]


@dataclass(frozen=True)
class ReplicaSession:
    """How one of several controller replicas holds its broker session."""

    replica_id: str
    session_expiry_s: int = 300

    @property
    def client_id(self) -> str:
        return f"{SERVICE_USER}-{self.replica_id}"


@functools.lru_cache(maxsize=65_536)
def _matches(pattern: str, topic: str) -> bool:
    """``topic_matches_sub``, remembered: paho builds a matcher per call (15 % of the network thread's time
    at 1,000s of messages/s); a fleet has a bounded set of (filter, device topic) pairs."""
    return mqtt.topic_matches_sub(pattern, topic)


def shared_filter(pattern: str) -> str:
    """The shared-subscription form of ``pattern``: each matching message goes to one group member."""
    return f"$share/{SHARE_GROUP}/{pattern}"


@dataclass(frozen=True)
class BrokerEndpoint:
    """What an enrolling device needs: ``mqtts://`` (mTLS with its device certificate, server certificate
    signed by the device CA) or ``mqtt://`` (username = device id, password = device-signed JWT)."""

    url: str
    auth: str  # "mtls" | "jwt"


@dataclass
class ServiceClientOptions:
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    tls: ssl.SSLContext | None = None
    client_id: str = SERVICE_USER
    extra: dict[str, Any] = field(default_factory=dict)


class Broker(ABC):
    """An MQTT broker as the controller sees it."""

    def __init__(self) -> None:
        self._handlers: list[tuple[str, MessageHandler, bool]] = []
        self._client: mqtt.Client | None = None
        self._connected = threading.Event()
        self.on_connected: Callable[[], None] | None = None
        self.replica: ReplicaSession | None = None
        """Set (before ``start``) when this controller is one of several replicas on this broker."""

    # ------------------------------------------------------------------ interface
    @property
    @abstractmethod
    def endpoint(self) -> BrokerEndpoint:
        """The URL (and auth kind) devices get at enrollment."""

    @abstractmethod
    def _service_options(self) -> ServiceClientOptions:
        """How the controller's own client connects."""

    @abstractmethod
    def revoke_device(self, device_id: str, serial: int | None = None) -> None:
        """Cut a device off: refuse its credential (certificate ``serial``) from now on and disconnect
        it if connected."""

    def start(self) -> None:
        """Connect the service client (subclasses start their broker first)."""
        opts = self._service_options()
        replica = self.replica
        # a persistent session: the broker queues device messages for the controller while it is away
        if replica is None:
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2,
                client_id=opts.client_id,
                protocol=mqtt.MQTTv311,
                clean_session=False,
            )
        else:  # MQTT 5: a session that expires, so a replica gone for good stops taking a share
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2, client_id=replica.client_id, protocol=mqtt.MQTTv5
            )
        if opts.username is not None:
            client.username_pw_set(opts.username, opts.password)
        if opts.tls is not None:
            client.tls_set_context(opts.tls)
        client.reconnect_delay_set(1, 2)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._client = client
        if replica is None:
            client.connect_async(opts.host, opts.port, keepalive=30)
        else:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = replica.session_expiry_s
            client.connect_async(opts.host, opts.port, keepalive=30, clean_start=False, properties=props)
        client.loop_start()
        if not self._connected.wait(15):
            log.warning("broker service client not connected yet (%s:%s)", opts.host, opts.port)

    def stop(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None
        self._connected.clear()

    def leave(self) -> None:
        """Stop and end this replica's broker session for good (scaling down): the broker forgets its
        subscription, so its share of device messages goes to the replicas that remain. ``stop`` keeps the
        session (a restart misses nothing)."""
        if self._client is not None and self.replica is not None:
            props = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 0
            self._client.disconnect(properties=props)
        self.stop()

    @counted_publish
    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> bool:
        """Publish; True when the broker acknowledged it (QoS 1) within 5 s."""
        if self._client is None:
            return False
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return False
        try:
            info.wait_for_publish(5)
        except (RuntimeError, ValueError):
            return False
        return info.is_published()

    def publish_many(
        self, messages: list[tuple[str, bytes]], qos: int = 1, retain: bool = False
    ) -> list[bool]:
        """Publish every ``(topic, payload)``, then wait for the acknowledgements: the QoS 1 round trips
        overlap (paho keeps up to its in-flight window open) instead of one after another. Per message:
        True when the broker acknowledged it within 5 s (plus 10 ms per message) of the first send."""
        client = self._client
        if client is None:
            return [False] * len(messages)
        infos = [client.publish(topic, payload, qos=qos, retain=retain) for topic, payload in messages]
        deadline = time.monotonic() + 5.0 + 0.01 * len(messages)
        done: list[bool] = []
        for (topic, _), info in zip(messages, infos, strict=True):
            ok = info.rc == mqtt.MQTT_ERR_SUCCESS
            if ok:
                try:
                    info.wait_for_publish(max(0.01, deadline - time.monotonic()))
                    ok = info.is_published()
                except (RuntimeError, ValueError):
                    ok = False
            MQTT_PUBLISHED.labels(topic_leaf(topic), "ok" if ok else "failed").inc()
            done.append(ok)
        return done

    def subscribe(self, pattern: str, handler: MessageHandler, *, shared: bool = False) -> None:
        """Call ``handler(topic, payload)`` for every message matching ``pattern`` (kept over reconnects).
        ``shared``: when this controller is one of several replicas, each message goes to one of them
        (a shared subscription); alone, it is a plain subscription."""
        self._handlers.append((pattern, handler, shared))
        if self._client is not None and self._connected.is_set():
            self._client.subscribe(self._filter(pattern, shared), qos=1)

    def _filter(self, pattern: str, shared: bool) -> str:
        return shared_filter(pattern) if shared and self.replica is not None else pattern

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    # ------------------------------------------------------------------ callbacks
    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            log.warning("broker refused the service client: %s", rc)
            return
        for pattern, _, shared in self._handlers:
            client.subscribe(self._filter(pattern, shared), qos=1)
        self._connected.set()
        if self.on_connected is not None:
            threading.Thread(target=self.on_connected, daemon=True, name="fedge-broker-sync").start()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        self._connected.clear()
        log.info("broker service client disconnected (%s)", rc)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        for pattern, handler, _ in self._handlers:
            if _matches(pattern, msg.topic):
                try:
                    handler(msg.topic, bytes(msg.payload))
                except Exception:
                    log.exception("broker message handler failed on %s", msg.topic)

    def _kick_by_client_id(self, client_id: str, opts: ServiceClientOptions) -> None:
        """Take over ``client_id`` for a moment: the broker closes the connection that held it (MQTT
        session takeover), then leave."""
        kicker = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
        if opts.username is not None:
            kicker.username_pw_set(opts.username, opts.password)
        if opts.tls is not None:
            kicker.tls_set_context(opts.tls)
        try:
            kicker.connect(opts.host, opts.port, keepalive=10)
            kicker.loop_start()
            time.sleep(0.3)
            kicker.disconnect()
            kicker.loop_stop()
        except OSError as exc:
            log.warning("could not kick %s: %s", client_id, exc)
