"""One after-commit notifier for fleet changes.

The fleet services (devices, rollouts, commands) announce what changed *after* their transaction has
committed; listeners (the MQTT messaging today, metrics or an audit log later) subscribe here. Routes
never call a transport directly, and a service never knows who listens. A listener that fails is
logged and does not affect the request or the other listeners.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from controller.db.models import DeviceCommand

log = logging.getLogger("fedge.fleet.events")


class FleetListener(Protocol):
    """What a listener hears; each call comes after the change is committed."""

    def desired_changed(self, device_ids: list[str]) -> None:
        """These devices have a new desired state (deployment, rollback, enrollment)."""

    def command_created(self, command: DeviceCommand) -> None:
        """A queued command for a device (to push at once; the agent also polls)."""

    def device_revoked(self, device_id: str) -> None:
        """The device's credential must stop working everywhere."""


class FleetEvents:
    """Fan-out of fleet changes to the subscribed listeners, in subscription order."""

    def __init__(self) -> None:
        self._listeners: list[FleetListener] = []
        self._lock = threading.Lock()

    def subscribe(self, listener: FleetListener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def unsubscribe(self, listener: FleetListener) -> None:
        with self._lock:
            self._listeners = [x for x in self._listeners if x is not listener]

    def _each(self) -> list[FleetListener]:
        with self._lock:
            return list(self._listeners)

    def desired_changed(self, device_ids: list[str]) -> None:
        if not device_ids:
            return
        for listener in self._each():
            try:
                listener.desired_changed(list(device_ids))
            except Exception:
                log.exception("fleet listener %r failed on desired_changed", listener)

    def command_created(self, command: DeviceCommand) -> None:
        for listener in self._each():
            try:
                listener.command_created(command)
            except Exception:
                log.exception("fleet listener %r failed on command_created", listener)

    def device_revoked(self, device_id: str) -> None:
        for listener in self._each():
            try:
                listener.device_revoked(device_id)
            except Exception:
                log.exception("fleet listener %r failed on device_revoked", listener)
