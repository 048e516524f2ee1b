"""MQTT for the fleet: the ``Broker`` interface, its embedded (amqtt) and Mosquitto implementations,
and the controller's messaging on the device topics."""

from __future__ import annotations

from controller.fleet.broker.base import SERVICE_USER, Broker, BrokerEndpoint
from controller.fleet.broker.factory import make_broker
from fedge_protocol.topics import device_may, device_topic, split_device_topic

__all__ = [
    "SERVICE_USER",
    "Broker",
    "BrokerEndpoint",
    "device_may",
    "device_topic",
    "make_broker",
    "split_device_topic",
]
