"""Several controller replicas on one real Mosquitto: each replica's service client holds its own session
(client id ``fedge-controller-<replica>``, MQTT 5) and takes the device topics through a shared subscription,
so every device message reaches exactly one replica; a replica that is away keeps its share queued and gets
it when it comes back."""

from __future__ import annotations

import os
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from paho.mqtt.enums import CallbackAPIVersion

from controller.fleet.broker.base import ReplicaSession
from controller.fleet.broker.mosquitto import MosquittoBroker, MosquittoFiles, render
from controller.fleet.ca import DeviceCA
from fedge_protocol import Leaf, device_topic, every_device
from tests.e2e.broker_fixtures import MosquittoServer
from tests.fixtures.services import free_port, wait_for


@pytest.fixture(scope="module")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DeviceCA, MosquittoFiles]]:
    data_dir = tmp_path_factory.mktemp("replica-broker")
    ca = DeviceCA.load_or_create(data_dir / "fleet")
    port = free_port()
    user = "root" if os.geteuid() == 0 else None
    files = render(ca, data_dir / "fleet" / "mosquitto", port, user=user)
    server = MosquittoServer(files, port)
    server.start()
    try:
        yield ca, files
    finally:
        server.stop()


class Replica:
    """A controller replica's broker client, recording the device messages it is handed."""

    def __init__(self, ca: DeviceCA, files: MosquittoFiles, replica_id: str | None) -> None:
        self.broker = MosquittoBroker(ca, files, "127.0.0.1", _port(files))
        if replica_id is not None:
            self.broker.replica = ReplicaSession(replica_id, session_expiry_s=60)
        self.got: list[bytes] = []
        self._lock = threading.Lock()
        self.broker.subscribe(every_device(Leaf.TELEMETRY), self._on, shared=True)

    def _on(self, _topic: str, payload: bytes) -> None:
        with self._lock:
            self.got.append(payload)

    def start(self) -> Replica:
        self.broker.start()
        wait_for(lambda: self.broker.connected, 10, "replica connected to mosquitto")
        return self


def _publish(files: MosquittoFiles, port: int, payloads: list[bytes]) -> None:
    """Publish as a device would (QoS 1), with the service credential (allowed on every fedge/ topic)."""
    device = str(uuid.uuid4())
    broker = MosquittoBroker(DeviceCA.load_or_create(files.directory.parent), files, "127.0.0.1", port)
    opts = broker._service_options()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{device[:8]}", protocol=mqtt.MQTTv311)
    assert opts.tls is not None
    client.tls_set_context(opts.tls)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        for payload in payloads:
            client.publish(device_topic(device, Leaf.TELEMETRY), payload, qos=1).wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()


def _port(files: MosquittoFiles) -> int:
    return int(files.conf.read_text().split("listener ")[1].split()[0])


def test_each_device_message_reaches_exactly_one_replica(
    mosquitto: tuple[DeviceCA, MosquittoFiles],
) -> None:
    ca, files = mosquitto
    run = uuid.uuid4().hex[:6]
    a, b = Replica(ca, files, f"a{run}").start(), Replica(ca, files, f"b{run}").start()
    try:
        sent = [f"m{i}".encode() for i in range(40)]
        _publish(files, _port(files), sent)
        wait_for(lambda: len(a.got) + len(b.got) >= len(sent), 10, "every message ingested")
        assert sorted(a.got + b.got) == sorted(sent)  # each one exactly once across the two
        assert a.got and b.got  # and both replicas take a share
    finally:
        a.broker.leave()
        b.broker.leave()


def test_a_replica_away_gets_its_share_when_it_returns(mosquitto: tuple[DeviceCA, MosquittoFiles]) -> None:
    ca, files = mosquitto
    run = uuid.uuid4().hex[:6]
    a, b = Replica(ca, files, f"a{run}").start(), Replica(ca, files, f"b{run}").start()
    try:
        b.broker.stop()  # restarting, e.g. a rolling update: its session (and share) stays on the broker
        sent = [f"n{i}".encode() for i in range(20)]
        _publish(files, _port(files), sent)
        wait_for(lambda: len(a.got) >= 1, 10, "replica a ingests")
        back = Replica(ca, files, f"b{run}").start()  # the same replica id: the same session
        try:
            wait_for(lambda: len(a.got) + len(back.got) >= len(sent), 10, "the queued share delivered")
            assert sorted(a.got + back.got) == sorted(sent)
            assert back.got  # what was queued for it while it was away
        finally:
            back.broker.leave()
    finally:
        a.broker.leave()


def test_a_replica_that_left_takes_no_share(mosquitto: tuple[DeviceCA, MosquittoFiles]) -> None:
    ca, files = mosquitto
    run = uuid.uuid4().hex[:6]
    a, b = Replica(ca, files, f"a{run}").start(), Replica(ca, files, f"b{run}").start()
    try:
        b.broker.leave()  # scaled down for good
        sent = [f"q{i}".encode() for i in range(10)]
        _publish(files, _port(files), sent)
        wait_for(lambda: len(a.got) >= len(sent), 10, "the remaining replica takes every message")
        assert sorted(a.got) == sorted(sent)
    finally:
        a.broker.leave()


def test_a_single_controller_keeps_a_plain_subscription(mosquitto: tuple[DeviceCA, MosquittoFiles]) -> None:
    """No replica id: the service client id and a plain subscription, as before (it gets every message)."""
    ca, files = mosquitto
    alone = Replica(ca, files, None)
    assert alone.broker._filter("fedge/+/telemetry", shared=True) == "fedge/+/telemetry"
    alone.start()
    try:
        sent = [f"p{i}".encode() for i in range(5)]
        _publish(files, _port(files), sent)
        wait_for(lambda: len(alone.got) >= len(sent), 10, "every message")
        assert sorted(alone.got) == sorted(sent)
    finally:
        alone.broker.stop()


def test_replica_filter_is_a_shared_subscription(tmp_path: Path) -> None:
    replica = ReplicaSession("r1")
    assert replica.client_id == "fedge-controller-r1"
    broker = MosquittoBroker(
        DeviceCA.load_or_create(tmp_path), MosquittoFiles(tmp_path / "m"), "127.0.0.1", 1
    )
    broker.replica = replica
    assert broker._filter("fedge/+/state", shared=True) == "$share/fedge-controller/fedge/+/state"
    assert broker._filter("fedge/+/desired", shared=False) == "fedge/+/desired"


def test_a_revocation_keeps_those_another_replica_made(tmp_path: Path) -> None:
    """Replica b started before a revoked d1; when b revokes d2, the CRL and ACL it writes still hold d1."""
    ca = DeviceCA.load_or_create(tmp_path / "fleet")
    files = render(ca, tmp_path / "mosquitto", free_port())
    made: list[tuple[str, int]] = []  # what the shared database says is revoked
    a = MosquittoBroker(ca, files, "127.0.0.1", 1, revoked_source=lambda: list(made))
    b = MosquittoBroker(ca, files, "127.0.0.1", 1, revoked_source=lambda: list(made))
    d1, d2 = str(uuid.uuid4()), str(uuid.uuid4())
    a.revoke_device(d1, 1001)
    made.append((d1, 1001))
    b.revoke_device(d2, 1002)
    acl = files.acl.read_text()
    assert f"user {d1}\ntopic deny #" in acl and f"user {d2}\ntopic deny #" in acl
    crl = x509.load_pem_x509_crl(files.crl.read_bytes())
    assert {r.serial_number for r in crl} == {1001, 1002}


def test_an_operator_ends_a_stopped_replicas_session_by_hand(
    mosquitto: tuple[DeviceCA, MosquittoFiles],
) -> None:
    """The command docs/scale.md gives: a clean-start connect with the replica's client id discards its
    session, and its share goes to the replicas that remain."""
    ca, files = mosquitto
    run = uuid.uuid4().hex[:6]
    a, b = Replica(ca, files, f"a{run}").start(), Replica(ca, files, f"b{run}").start()
    try:
        b.broker.stop()  # stopped, session kept
        subprocess.run(
            [
                "mosquitto_sub", "-V", "mqttv5", "-h", "127.0.0.1", "-p", str(_port(files)),
                "--cafile", "ca.pem", "--cert", "service.pem", "--key", "service.key",
                "-i", f"fedge-controller-b{run}", "-t", "fedge/none", "-E",
            ],
            cwd=files.directory,
            check=True,
            timeout=10,
        )  # fmt: skip
        sent = [f"s{i}".encode() for i in range(10)]
        _publish(files, _port(files), sent)
        wait_for(lambda: len(a.got) >= len(sent), 10, "the remaining replica takes every message")
        assert sorted(a.got) == sorted(sent)
    finally:
        a.broker.leave()
