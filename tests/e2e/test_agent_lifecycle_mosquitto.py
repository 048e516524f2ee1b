"""Certificate renewal with the real Mosquitto (mTLS): after a renewal the MQTT link presents the new
certificate, so the agent still connects once its first certificate expired; one that did not renew is
refused at the TLS handshake."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from controller.chain.base import ChainBackend
from controller.state import ControllerState
from tests.conftest import LiveServer
from tests.e2e.broker_fixtures import MosquittoServer, mosquitto_controller, mqtt_device
from tests.fixtures.services import wait_for

Fleet = tuple[LiveServer, ControllerState, MosquittoServer]
CERT_SECONDS = 20


@pytest.fixture(scope="module")
def short_lived_mosquitto(
    tmp_path_factory: pytest.TempPathFactory, shared_evm: ChainBackend
) -> Iterator[Fleet]:
    with mosquitto_controller(tmp_path_factory.mktemp("mqtt-short"), shared_evm) as fleet:
        fleet[1].fleet.ca.cert_seconds = CERT_SECONDS  # what FEDGE_DEVICE_CERT_SECONDS sets
        yield fleet


@pytest.mark.heavy
def test_a_renewed_certificate_is_presented_to_mosquitto_after_the_old_one_expired(
    short_lived_mosquitto: Fleet, tmp_path: Path
) -> None:
    server, _state, broker = short_lived_mosquitto
    with httpx.Client(base_url=server.url, timeout=30) as http:
        renewing = mqtt_device(server.url, http, tmp_path / "renewing")
        stale = mqtt_device(server.url, http, tmp_path / "stale")
    assert renewing.identity.broker_url and renewing.identity.broker_url.startswith("mqtts://")
    lifecycle = renewing.agent.lifecycle
    assert lifecycle is not None
    lifecycle.renew_fraction = 0.6
    lifecycle.on_renewed(lambda: renewing.mqtt.reload_certificate(renewing.state_dir))
    first = renewing.identity.certificate
    renewing.run(poll_interval=0.2)
    try:
        wait_for(lambda: lifecycle.renewals >= 1, 30, "the agent renewed its certificate")
        time.sleep(max(first.not_valid_after_utc.timestamp() - time.time() + 1.0, 0.0))

        broker.stop()  # every device reconnects: a new TLS handshake
        wait_for(lambda: not renewing.mqtt.connected.is_set(), 10, "the agent saw the broker go")
        broker.start()

        wait_for(renewing.mqtt.connected.is_set, 20, "the renewed agent reconnected")
        time.sleep(3.0)  # the stale device has had several reconnect tries (backoff 1-2 s)
        assert not stale.mqtt.connected.is_set()  # expired certificate: refused at the handshake
    finally:
        renewing.close()
        stale.close()
