"""End to end on a real Mosquitto on loopback: a sensor publishes readings, the agent's online service
forecasts and learns from them, refuses the bad ones, and resumes after a restart."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.online.config import OnlineConfig
from edge_agent.online.service import OnlineService
from tests.edge_agent.online.broker import sensor_broker
from tests.edge_agent.online.streams import meter_stream
from tests.fixtures.services import wait_for


@pytest.fixture(scope="module")
def broker_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    with sensor_broker(tmp_path_factory.mktemp("sensor-broker")) as port:
        yield port


def _config(port: int) -> OnlineConfig:
    return OnlineConfig.model_validate(
        {
            "learners": [
                {
                    "name": "w4",
                    "backend": "river",
                    "transformer": "smart_meter",
                    "transformer_options": {"horizon": 8},
                    "save": {"evaluate_every": 100},
                    "mqtt": {"broker": f"mqtt://127.0.0.1:{port}", "topics": ["site/meters/+/W4"], "qos": 1},
                }
            ]
        }
    )


@pytest.fixture
def publisher(broker_port: int) -> Iterator[mqtt.Client]:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    client.connect("127.0.0.1", broker_port)
    client.loop_start()
    try:
        yield client
    finally:
        client.disconnect()
        client.loop_stop()


def _publish(client: mqtt.Client, topic: str, payload: bytes) -> None:
    client.publish(topic, payload, qos=1).wait_for_publish(10)


def test_readings_on_the_sensor_topic_are_forecast_and_learned(
    tmp_path: Path, broker_port: int, publisher: mqtt.Client
) -> None:
    service = OnlineService.from_config(_config(broker_port), tmp_path)
    learner = service.learners["w4"]
    seen: list[tuple[Any, Any]] = []
    learner.observers.append(lambda y, p, _x: seen.append((y, p)))
    service.start()
    try:
        wait_for(service.feeds[0].connected.is_set, 10, "the online service connected to the sensor broker")
        readings = list(meter_stream(96 * 5))
        for reading in readings:
            _publish(publisher, "site/meters/m1/W4", json.dumps(reading).encode())
        _publish(publisher, "site/meters/m1/W4", b"{broken")
        _publish(publisher, "site/meters/m1/W4", json.dumps(readings[10]).encode())  # an old reading again
        _publish(publisher, "site/meters/m1/W6", json.dumps(readings[-1]).encode())  # another learner's topic

        wait_for(lambda: sum(learner.status()["rejected"].values()) == 2, 60, "the stream consumed")
        status = service.status("w4")
    finally:
        service.stop()

    assert status["messages"] == len(readings)
    assert status["samples_seen"] == len(readings) - 36 - 8 + 1
    assert status["rejected"] == {"malformed_json": 1, "out_of_order": 1}
    errors = [(float(y) - float(p)) ** 2 for y, p in seen]
    assert np.mean(errors[-100:]) < 0.5 * np.mean(errors[:50])
    assert status["last_saved_version"] >= 1 and status["queue"]["errors"] == 0


def test_the_service_resumes_its_learners_after_a_restart(
    tmp_path: Path, broker_port: int, publisher: mqtt.Client
) -> None:
    readings = [json.dumps(r).encode() for r in meter_stream(200)]
    first = OnlineService.from_config(_config(broker_port), tmp_path)
    first.start()
    try:
        wait_for(first.feeds[0].connected.is_set, 10, "connected")
        for payload in readings[:150]:
            _publish(publisher, "site/meters/m1/W4", payload)
        wait_for(lambda: first.learners["w4"].messages == 150, 60, "150 readings consumed")
    finally:
        first.stop()  # writes the checkpoint
    before = first.learners["w4"].status()

    second = OnlineService.from_config(_config(broker_port), tmp_path)
    second.start()
    try:
        wait_for(second.feeds[0].connected.is_set, 10, "connected again")
        after = second.learners["w4"].status()
        for payload in readings[150:]:
            _publish(publisher, "site/meters/m1/W4", payload)
        wait_for(lambda: second.learners["w4"].messages == 200, 60, "the rest consumed")
        final = second.learners["w4"].status()
    finally:
        second.stop()

    assert after["restored_from"] == "checkpoint"
    for key in ("messages", "samples_seen", "samples_learned", "loss", "last_saved_version"):
        assert after[key] == before[key], key
    assert final["rejected"] == {}  # the window went on where it stopped: no gap, no duplicate
    assert final["samples_seen"] == 200 - 36 - 8 + 1
