"""The embedded broker: amqtt (MQTT 3.1.1) in a background event loop inside the controller, on
127.0.0.1 and a configured or free port.

Devices authenticate with username = device id and password = a device-signed ES256 JWT (the same
credential as the HTTP API), checked against the device registry by ``FleetAuthPlugin``; the client id
must be the device id. ``FleetTopicPlugin`` applies the device ACL (own prefix; read desired/cmd, write
state/telemetry) on subscribe, publish and delivery. Revocation refuses the credential at once (the
registry says revoked) and closes the device's open connection.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from amqtt.broker import Broker as AmqttBroker  # type: ignore[import-untyped]
from amqtt.contexts import Action  # type: ignore[import-untyped]
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin  # type: ignore[import-untyped]
from amqtt.session import Session  # type: ignore[import-untyped]

from controller.fleet.broker.base import (
    SERVICE_USER,
    Broker,
    BrokerEndpoint,
    ServiceClientOptions,
)
from fedge_protocol.topics import device_may

log = logging.getLogger("fedge.broker.embedded")

MAX_CONNECTIONS = 4096
"""Open MQTT connections the embedded broker accepts (devices and the controller's own clients); amqtt
leaves the one past the limit waiting, unanswered, until another closes (1,000 devices need 1,001)."""

# amqtt builds plugins from import strings and plain config: the running broker is found by a key.
_AUTHORITIES: dict[str, _Authority] = {}


@dataclass
class _Authority:
    service_password: str
    check_device: Callable[[str, str], bool]  # (device id, password) -> credential valid and active
    revoked: set[str]


def _authority(key: str) -> _Authority | None:
    return _AUTHORITIES.get(key)


class FleetAuthPlugin(BaseAuthPlugin):  # type: ignore[misc]
    """username = device id, password = device-signed JWT, client id = device id; or the service user."""

    @dataclass
    class Config:
        authority: str = ""

    async def authenticate(self, *, session: Session) -> bool | None:
        auth = _authority(str(self._get_config_option("authority", "")))
        if auth is None:
            return False
        username, password = session.username, session.password
        if not username or not password:
            return False
        if username == SERVICE_USER:
            return secrets.compare_digest(str(password), auth.service_password)
        if username in auth.revoked or session.client_id != username:
            return False
        return await asyncio.to_thread(auth.check_device, username, str(password))


class FleetTopicPlugin(BaseTopicPlugin):  # type: ignore[misc]
    """The device ACL (see ``device_may``); the service user may use every ``fedge/`` topic."""

    @dataclass
    class Config:
        authority: str = ""

    async def topic_filtering(
        self, *, session: Session | None = None, topic: str | None = None, action: Action | None = None
    ) -> bool | None:
        auth = _authority(str(self._get_config_option("authority", "")))
        if auth is None or session is None or not topic or not session.username:
            return False
        if session.username == SERVICE_USER:
            return True
        if session.username in auth.revoked:
            return False
        return device_may(session.username, topic, write=action == Action.PUBLISH)


class _FleetAmqttBroker(AmqttBroker):  # type: ignore[misc]
    """amqtt 0.12.1 sends, on every CONNECT, the retained messages of *every* subscription filter any
    client ever made, unfiltered (``for topic in self._subscriptions``): a device would receive other
    devices' desired states. Retained messages go only to the session's own, permitted subscriptions."""

    async def _publish_retained_messages_for_subscription(
        self, subscription: tuple[str, int], session: Session
    ) -> None:
        topic_filter = subscription[0]
        subscribers = self._subscriptions.get(topic_filter, [])
        if not any(s.client_id == session.client_id for s, _ in subscribers):
            return
        if not await self._topic_filtering(session, topic_filter, Action.RECEIVE):
            return
        await super()._publish_retained_messages_for_subscription(subscription, session)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class EmbeddedBroker(Broker):
    """amqtt in its own thread and event loop."""

    def __init__(
        self,
        check_device: Callable[[str, str], bool],
        host: str = "127.0.0.1",
        port: int = 0,
        public_url: str | None = None,
    ) -> None:
        super().__init__()
        self.host, self.port = host, port or free_port(host)
        self.public_url = public_url or f"mqtt://{host}:{self.port}"
        self._key = secrets.token_hex(8)
        self._auth = _Authority(secrets.token_urlsafe(24), check_device, set())
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._broker: _FleetAmqttBroker | None = None

    @property
    def endpoint(self) -> BrokerEndpoint:
        return BrokerEndpoint(self.public_url, "jwt")

    def _service_options(self) -> ServiceClientOptions:
        return ServiceClientOptions(self.host, self.port, SERVICE_USER, self._auth.service_password)

    def _config(self) -> dict[str, Any]:
        plugin = {"authority": self._key}
        return {
            "listeners": {
                "default": {
                    "type": "tcp",
                    "bind": f"{self.host}:{self.port}",
                    "max_connections": MAX_CONNECTIONS,
                }
            },
            "plugins": {
                f"{__name__}.FleetAuthPlugin": plugin,
                f"{__name__}.FleetTopicPlugin": plugin,
            },
        }

    def start(self) -> None:
        _AUTHORITIES[self._key] = self._auth
        ready: asyncio.Future[None] | None = None
        started = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            nonlocal ready
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                self._broker = _FleetAmqttBroker(self._config(), loop=loop)
                loop.run_until_complete(self._broker.start())
            except BaseException as exc:
                errors.append(exc)
                started.set()
                return
            started.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True, name="fedge-embedded-broker")
        self._thread.start()
        started.wait(30)
        if errors:
            raise RuntimeError(f"embedded MQTT broker did not start: {errors[0]}") from errors[0]
        super().start()

    def stop(self) -> None:
        super().stop()
        loop, broker = self._loop, self._broker
        if loop is not None and broker is not None and loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(broker.shutdown(), loop).result(10)
            except Exception:
                log.exception("embedded broker shutdown failed")
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        _AUTHORITIES.pop(self._key, None)
        self._broker = self._loop = self._thread = None

    def revoke_device(self, device_id: str, serial: int | None = None) -> None:
        self._auth.revoked.add(device_id)
        loop, broker = self._loop, self._broker
        if loop is None or broker is None:
            return

        async def drop() -> None:
            for client_id, (session, handler) in list(broker._sessions.items()):
                if session.username == device_id or client_id == device_id:
                    await broker._stop_handler(handler)

        try:
            asyncio.run_coroutine_threadsafe(drop(), loop).result(5)
        except Exception:
            log.exception("could not close the connection of revoked device %s", device_id)
