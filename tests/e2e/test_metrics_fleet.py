"""The controller's fleet metrics from a live controller with its embedded broker and a real MQTT device:
a state report over MQTT moves the received counter of its topic leaf and makes the device count as online
(docs/metrics.md)."""

from __future__ import annotations

from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from controller.state import ControllerState
from tests.conftest import LiveServer
from tests.e2e.broker_fixtures import mqtt_device
from tests.fixtures.services import wait_for

Live = tuple[LiveServer, ControllerState]


def _scrape(http: httpx.Client) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    r = http.get("/metrics")  # no credential: metrics_token is not set
    assert r.status_code == 200, r.text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def test_an_mqtt_state_report_is_counted_and_the_device_is_online(
    controller: Live, http: httpx.Client, tmp_path: Path
) -> None:
    received = ("fedge_controller_mqtt_messages_received_total", frozenset({("leaf", "state")}))
    online = ("fedge_controller_devices_online", frozenset())
    before = _scrape(http)
    dev = mqtt_device(controller[0].url, http, tmp_path / "m")
    try:
        assert dev.mqtt.publish("state", 1, {"state": "succeeded", "seq": 1})
        wait_for(
            lambda: _scrape(http).get(received, 0.0) > before.get(received, 0.0),
            10,
            "the controller counted the state report",
        )
        after = _scrape(http)
        assert after[online] >= before.get(online, 0.0) + 1
        assert after[("fedge_controller_devices", frozenset({("status", "active")}))] >= 1
        assert after[("fedge_controller_db_scrape_ok", frozenset())] == 1
        # no raw topic (which names the device) ever becomes a label
        assert not [key for key in after if any(dev.id in value for _, value in key[1])]
    finally:
        dev.close()
