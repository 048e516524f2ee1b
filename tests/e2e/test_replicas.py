"""Two real ``fedge-controller serve`` processes (replicas ``a`` and ``b``) on one PostgreSQL + S3 + Mosquitto +
JSON-RPC chain (anvil) behave as one controller: agents enrolled half at each URL take a two-wave rollout
created at one replica (every target succeeds once, each device is given the model once), every device
message reaches exactly one replica (shared subscriptions), and a training job submitted at one replica
runs once (claimed by one, one new model version)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, func, select

from controller.db.models import Deployment, DeploymentTarget, Device, Job, ModelVersion
from controller.fleet.broker.mosquitto import render
from controller.fleet.ca import DeviceCA
from tests.conftest import ADMIN_TOKEN
from tests.controller.test_jobs import _package
from tests.e2e.broker_fixtures import MosquittoServer, MqttDevice, mqtt_device
from tests.e2e.helpers import ADMIN, add_model, deploy, upload_onnx
from tests.fixtures.services import _ServerProcess, free_port, wait_for

pytestmark = pytest.mark.heavy


@dataclass
class Replica:
    name: str
    url: str
    data_dir: Path
    process: _ServerProcess

    def received(self, http: httpx.Client) -> int:
        """Device messages this replica took from the broker (its /metrics counter)."""
        text = http.get(f"{self.url}/metrics").text
        total = 0.0
        for line in text.splitlines():
            if line.startswith("fedge_controller_mqtt_messages_received_total{") and (
                'leaf="state"' in line or 'leaf="telemetry"' in line
            ):
                total += float(line.rsplit(" ", 1)[1])
        return int(total)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def replicas(
    tmp_path: Path, postgres_db_url: str, s3_server, anvil_url: str
) -> Iterator[tuple[list[Replica], str]]:  # type: ignore[no-untyped-def]
    """Mosquitto and two controller processes; the second starts with copies of the first's device CA and
    chain state (the registry address and key), everything else is in PostgreSQL and S3."""
    ca = DeviceCA.load_or_create(tmp_path / "a" / "fleet")
    port = free_port()
    user = "root" if os.geteuid() == 0 else None
    files = render(ca, tmp_path / "mosquitto", port, user=user)
    broker = MosquittoServer(files, port)
    broker.start()
    prefix = f"r{uuid.uuid4().hex[:10]}-"
    env = {
        **os.environ,
        "FEDGE_DATABASE_URL": postgres_db_url,
        "FEDGE_STORAGE_BACKEND": "s3",
        "FEDGE_S3_ENDPOINT": s3_server.endpoint,
        "FEDGE_S3_ACCESS_KEY": s3_server.access_key,
        "FEDGE_S3_SECRET_KEY": s3_server.secret_key,
        "FEDGE_S3_SECURE": "false",
        "FEDGE_BUCKET_PREFIX": prefix,
        "FEDGE_CHAIN_BACKEND": "jsonrpc",
        "FEDGE_CHAIN_RPC_URL": anvil_url,
        "FEDGE_BROKER_BACKEND": "mosquitto",
        "FEDGE_BROKER_PORT": str(port),
        "FEDGE_MOSQUITTO_DIR": str(files.directory),
        "FEDGE_ADMIN_TOKEN": ADMIN_TOKEN,
        "FEDGE_FL_ENGINE": "none",
        "FEDGE_JOB_TIMEOUT_SECONDS": "60",
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        "DO_NOT_TRACK": "1",
    }
    started: list[Replica] = []
    try:
        for name in ("a", "b"):
            data_dir = tmp_path / name
            if name == "b":  # what replicas share besides the services: the device CA and the chain state
                shutil.copytree(tmp_path / "a" / "fleet", data_dir / "fleet")
                shutil.copytree(tmp_path / "a" / "chain", data_dir / "chain")
            http_port = free_port()
            url = f"http://127.0.0.1:{http_port}"
            process = _ServerProcess(
                f"controller-{name}",
                [
                    sys.executable,
                    "-m",
                    "controller.cli",
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(http_port),
                ],
                tmp_path / f"controller-{name}.log",
                env={
                    **env,
                    "FEDGE_DATA_DIR": str(data_dir),
                    "FEDGE_REPLICA_ID": name,
                    "FEDGE_PUBLIC_URL": url,
                },
            )
            started.append(Replica(name, url, data_dir, process))
            process.wait_ready(lambda url=url: _ready(url), f"controller {name} on {url}", timeout=90)
        yield started, postgres_db_url
    finally:
        for replica in started:
            replica.process.stop()
        broker.stop()


def _max_seq(device: MqttDevice) -> int:
    """How many messages the agent's outbox ever held (its AUTOINCREMENT counter)."""
    with sqlite3.connect(device.state_dir / "outbox.db") as db:
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
    return int(row[0]) if row else 0


def _train_model(http: httpx.Client, tmp_path: Path) -> str:
    dataset = http.post(
        "/v1/datasets",
        headers=ADMIN,
        files={"dataset": ("d.bin", b"0123456789abcdefXYZ", "application/octet-stream")},
        data={"metadata": json.dumps({"organization_id": "org", "samples_dimension": "(1,)"})},
    )
    assert dataset.status_code == 201, dataset.text
    meta = {
        "model_params": {"developer_id": "dev", "organization_id": "org"},
        "data_params": {"dataset_id": dataset.json()["dataset_id"]},
        "training": {"kind": "python", "entrypoint": "trainer.main:main", "hyperparameters": {"lr": 0.1}},
    }
    r = http.post(
        "/v1/models",
        headers=ADMIN,
        files=[
            ("metadata", (None, json.dumps(meta).encode())),
            ("training_package", ("t.tar.gz", _package(tmp_path).read_bytes())),
        ],
    )
    assert r.status_code == 201, r.text
    return str(r.json()["model_id"])


def test_two_controller_processes_roll_out_and_train_once(
    replicas: tuple[list[Replica], str], tmp_path: Path
) -> None:
    (a, b), db_url = replicas
    clients = {r.name: httpx.Client(base_url=r.url, timeout=30) for r in (a, b)}
    devices: list[MqttDevice] = []
    try:
        for i in range(4):  # agents spread across both replicas' URLs
            replica = (a, b)[i % 2]
            device = mqtt_device(replica.url, clients[replica.name], tmp_path / f"agent{i}")
            devices.append(device.run(poll_interval=60))
        ids = [d.id for d in devices]

        model_id, version = upload_onnx(clients["a"], add_model(2.0))
        engine = create_engine(db_url)
        with engine.connect() as c:
            revisions = dict(
                c.execute(select(Device.id, Device.desired_revision).where(Device.id.in_(ids))).all()
            )
        dep_id = deploy(clients["b"], model_id, version, ids, strategy={"waves": [0.5, 1.0]})

        def settled() -> bool:
            body = clients["a"].get(f"/v1/deployments/{dep_id}", headers=ADMIN).json()
            return bool(body["state"] != "rolling")

        wait_for(settled, 60, "the rollout settled")
        with engine.connect() as c:
            dep = c.execute(
                select(Deployment.state, Deployment.current_wave).where(Deployment.id == dep_id)
            ).one()
            targets = dict(
                c.execute(
                    select(DeploymentTarget.device_id, DeploymentTarget.state).where(
                        DeploymentTarget.deployment_id == dep_id
                    )
                ).all()
            )
            after = dict(
                c.execute(select(Device.id, Device.desired_revision).where(Device.id.in_(ids))).all()
            )
        assert tuple(dep) == ("succeeded", 1)
        assert targets == dict.fromkeys(ids, "succeeded")
        assert {d: after[d] - revisions[d] for d in ids} == dict.fromkeys(ids, 1)  # each given the model once
        for device in devices:  # every agent runs it
            wait_for(lambda device=device: len(device.outbox) == 0, 20, "outbox delivered")
            assert device.agent.runtime.infer({"x": [[1, 1, 1, 1]]}) == {"y": [[3.0, 3.0, 3.0, 3.0]]}

        # every device message was taken by exactly one replica, and both took a share
        sent = sum(_max_seq(d) for d in devices)
        wait_for(lambda: a.received(clients["a"]) + b.received(clients["b"]) >= sent, 20, "messages counted")
        got_a, got_b = a.received(clients["a"]), b.received(clients["b"])
        assert got_a + got_b == sent, (got_a, got_b, sent)
        assert got_a > 0 and got_b > 0

        # a training job submitted at b runs once, on one replica
        trained = _train_model(clients["a"], tmp_path)
        r = clients["b"].post(f"/v1/models/{trained}/train", headers=ADMIN, json={"hyperparameters": {}})
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]

        def job_done() -> bool:
            status = clients["a"].get(f"/v1/jobs/{job_id}", headers=ADMIN).json()["status"]
            return status in ("succeeded", "failed", "cancelled")

        wait_for(job_done, 90, "the training job ended")
        assert clients["a"].get(f"/v1/jobs/{job_id}", headers=ADMIN).json()["status"] == "succeeded"
        with engine.connect() as c:
            claimed_by = c.execute(select(Job.claimed_by).where(Job.id == job_id)).scalar_one()
            versions = c.execute(
                select(func.count()).select_from(ModelVersion).where(ModelVersion.model_id == trained)
            ).scalar_one()
        assert claimed_by.split(":")[0] in ("a", "b")
        assert versions == 1
        engine.dispose()
    finally:
        for device in devices:
            device.close()
        for client in clients.values():
            client.close()
