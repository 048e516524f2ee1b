"""MQTT topics of the fleet: one prefix per device, ``fedge/devices/{id}/{leaf}``.

Controller -> device: ``desired`` (retained, QoS 1: the signed desired-state envelope), ``cmd`` (signed
commands, QoS 1, not retained), ``infer`` (inference requests). Device -> controller: ``state`` and
``telemetry`` (QoS 1, :class:`~fedge_protocol.documents.OutboxMessage` from the agent's outbox) and
``inferred`` (answers to ``infer``). A device may read only the first three and write only the last three,
under its own prefix; both brokers enforce exactly :func:`device_may`.
"""

from __future__ import annotations

from enum import StrEnum

PREFIX = "fedge/devices"


class Leaf(StrEnum):
    """The last topic level under a device's prefix."""

    DESIRED = "desired"
    CMD = "cmd"
    INFER = "infer"
    STATE = "state"
    TELEMETRY = "telemetry"
    INFERRED = "inferred"


DEVICE_READ: tuple[Leaf, ...] = (Leaf.DESIRED, Leaf.CMD, Leaf.INFER)
"""What a device subscribes to (controller -> device)."""
DEVICE_WRITE: tuple[Leaf, ...] = (Leaf.STATE, Leaf.TELEMETRY, Leaf.INFERRED)
"""What a device publishes (device -> controller)."""


def device_topic(device_id: str, leaf: str) -> str:
    """``fedge/devices/{device_id}/{leaf}``."""
    return f"{PREFIX}/{device_id}/{leaf}"


def every_device(leaf: str) -> str:
    """The subscription pattern for one leaf of every device (``fedge/devices/+/{leaf}``)."""
    return device_topic("+", leaf)


def device_acl_pattern(leaf: str) -> str:
    """Mosquitto's ACL pattern for one leaf of the connecting client (``%u`` = its user name)."""
    return device_topic("%u", leaf)


def split_device_topic(topic: str) -> tuple[str, str] | None:
    """``fedge/devices/{id}/{leaf}`` -> (id, leaf); None for anything else."""
    parts = topic.split("/")
    if len(parts) != 4 or f"{parts[0]}/{parts[1]}" != PREFIX or not parts[2]:
        return None
    return parts[2], parts[3]


def device_may(device_id: str, topic: str, write: bool) -> bool:
    """The device ACL: own prefix only; read ``DEVICE_READ`` leaves, write ``DEVICE_WRITE`` leaves."""
    found = split_device_topic(topic)
    if found is None or found[0] != device_id:
        return False
    return found[1] in (DEVICE_WRITE if write else DEVICE_READ)
