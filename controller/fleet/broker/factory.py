"""Pick the Broker named by the settings: embedded amqtt (default), Mosquitto (one of several replicas
with ``replica_id``), or none."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from controller.fleet.broker.base import Broker, ReplicaSession

if TYPE_CHECKING:
    from controller.config import ControllerSettings
    from controller.fleet.devices import Fleet


def _sticky_port(path: Path, host: str) -> int:
    """A free port, the same as last time when it is still free: enrolled devices keep the broker URL
    they were given."""
    import socket

    from controller.fleet.broker.embedded import free_port

    try:
        previous = int(path.read_text().strip())
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, previous))
        return previous
    except (OSError, ValueError):
        port = free_port(host)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{port}\n")
        return port


def make_broker(settings: ControllerSettings, fleet: Fleet) -> Broker | None:
    """The broker named by ``settings.broker_backend`` (None for ``none``)."""
    if settings.broker_backend == "none":
        return None
    if settings.broker_backend == "embedded":
        from controller.fleet.broker.embedded import EmbeddedBroker

        def check_device(device_id: str, password: str) -> bool:
            from controller.errors import Unauthorized

            try:
                return fleet.authenticate(password).subject == device_id
            except Unauthorized:
                return False

        port = settings.broker_port or _sticky_port(
            settings.data_dir / "fleet" / "embedded-broker-port", settings.broker_host
        )
        return EmbeddedBroker(check_device, settings.broker_host, port, settings.broker_url)
    from controller.fleet.broker.mosquitto import MosquittoBroker, MosquittoFiles

    directory = settings.mosquitto_dir or settings.data_dir / "fleet" / "mosquitto"

    def revoked() -> list[tuple[str, int]]:
        return [
            (d.id, int(d.cert_serial, 16)) for d in fleet.list() if d.status != "active" and d.cert_serial
        ]

    broker = MosquittoBroker(
        fleet.ca,
        MosquittoFiles(directory),
        settings.broker_host,
        settings.broker_port,
        settings.broker_url,
        revoked(),
        revoked_source=revoked,
    )
    if settings.replica_id:
        broker.replica = ReplicaSession(settings.replica_id, settings.mqtt_session_expiry_seconds)
    return broker
