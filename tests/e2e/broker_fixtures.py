"""A real Mosquitto for the fleet tests (configured by ``controller.fleet.broker.mosquitto.render``:
TLS on 127.0.0.1 and a free port, client certificates from the device CA, identity as username, CRL,
ACL), a controller wired to it, and agents with an outbox and an MQTT link running their loop."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from controller.chain.base import ChainBackend
from controller.config import ControllerSettings
from controller.fleet.broker.mosquitto import MosquittoFiles, render
from controller.fleet.ca import DeviceCA
from controller.state import ControllerState, build_state
from edge_agent.deploy.agent import Agent
from edge_agent.identity import DeviceIdentity, enroll
from edge_agent.link.client import ControllerLink
from edge_agent.link.mqtt import MqttLink
from edge_agent.link.outbox import Outbox
from tests.conftest import ADMIN_TOKEN, LiveServer
from tests.e2e.helpers import enrollment_token
from tests.fixtures.services import _ServerProcess, free_port, wait_for

MOSQUITTO = "/usr/sbin/mosquitto"


class MosquittoServer:
    """Mosquitto with a rendered configuration; ``stop()``/``start()`` restart it on the same port."""

    def __init__(self, files: MosquittoFiles, port: int) -> None:
        self.files, self.port = files, port
        self.proc: _ServerProcess | None = None

    def _accepts(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
            return self.files.pid.exists()

    def start(self) -> None:
        self.proc = _ServerProcess(
            "mosquitto", [MOSQUITTO, "-c", str(self.files.conf)], self.files.directory / "mosquitto.log"
        )
        self.proc.wait_ready(self._accepts, f"mosquitto on 127.0.0.1:{self.port}", timeout=20)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None
        self.files.pid.unlink(missing_ok=True)

    def log(self) -> str:
        return self.proc.log_tail(60) if self.proc is not None else ""


@dataclass
class MqttDevice:
    """An enrolled agent with an outbox and an MQTT link, its loop running in a thread."""

    identity: DeviceIdentity
    agent: Agent
    state_dir: Path
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    @property
    def id(self) -> str:
        return self.identity.device_id

    @property
    def mqtt(self) -> MqttLink:
        assert self.agent.mqtt is not None
        return self.agent.mqtt

    @property
    def outbox(self) -> Outbox:
        assert self.agent.outbox is not None
        return self.agent.outbox

    def run(self, poll_interval: float = 60.0) -> MqttDevice:
        self.thread = threading.Thread(
            target=self.agent.run,
            args=(self.stop, poll_interval, 2.0),
            daemon=True,
            name=f"agent-{self.id[:8]}",
        )
        self.thread.start()
        return self

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(10)
        self.mqtt.stop()
        self.outbox.close()
        self.agent.link.close()


def mqtt_device(url: str, http: httpx.Client, state_dir: Path, connect: bool = True) -> MqttDevice:
    identity = enroll(url, enrollment_token(http), state_dir, facts={"cpu_count": 1})
    link = ControllerLink(identity)
    agent = Agent(state_dir, link, outbox=Outbox.in_state_dir(state_dir))
    agent.mqtt = MqttLink(
        identity, state_dir, agent.push_desired, on_connect=agent.wake, min_backoff=1, max_backoff=2
    )
    agent.start()
    device = MqttDevice(identity, agent, state_dir)
    if connect:
        agent.mqtt.start()
        wait_for(agent.mqtt.connected.is_set, 10, f"device {identity.device_id} connected to the broker")
    return device


@contextlib.contextmanager
def fleet_controller(
    data_dir: Path, chain: ChainBackend, **settings: Any
) -> Iterator[tuple[LiveServer, ControllerState]]:
    """A live controller (no job workers) on ``data_dir``; ``settings`` pick e.g. the broker backend."""
    state = build_state(
        ControllerSettings(data_dir=data_dir, admin_token=ADMIN_TOKEN, _env_file=None, **settings),
        chain,
        start_jobs=False,
    )
    try:
        with LiveServer(state) as server:
            yield server, state
    finally:
        state.close()


@contextlib.contextmanager
def mosquitto_controller(
    data_dir: Path, chain: ChainBackend
) -> Iterator[tuple[LiveServer, ControllerState, MosquittoServer]]:
    """A real Mosquitto (TLS, mTLS, CRL, ACL) and a live controller with broker_backend=mosquitto."""
    port = free_port()
    user = "root" if os.geteuid() == 0 else None  # reloads must still read the 0700 temp dir
    files = render(
        DeviceCA.load_or_create(data_dir / "fleet"), data_dir / "fleet" / "mosquitto", port, user=user
    )
    broker = MosquittoServer(files, port)
    broker.start()
    try:
        with fleet_controller(data_dir, chain, broker_backend="mosquitto", broker_port=port) as (s, st):
            yield s, st, broker
    finally:
        broker.stop()


@pytest.fixture(scope="module")
def mosquitto_fleet(
    tmp_path_factory: pytest.TempPathFactory, shared_evm: ChainBackend
) -> Iterator[tuple[LiveServer, ControllerState, MosquittoServer]]:
    """``mosquitto_controller`` for a test module."""
    with mosquitto_controller(tmp_path_factory.mktemp("mqtt-controller"), shared_evm) as fleet:
        yield fleet
