"""A real FedPATE job: the controller (live HTTP) supervises a TLS flower-superlink with SuperNode
authentication; two devices' real ``flower-supernode`` processes (started from their signed ``fl-join``
commands, with their enrolled keys, as the agent does) train 20 teachers each on their shard of the
controller's private digits pool, answer the ServerApp's query message with noisy vote histograms (paid
from their ledgers), and the student the controller trains on the labels becomes a registered model
version with a chain record and the labels' epsilon.

About a minute on 2 busy cores (one flwr-clientapp process per device for the one vote batch)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from controller.chain.base import ChainBackend
from controller.client import FedgeClient
from controller.config import ControllerSettings
from controller.federation.flower import kill_tagged
from controller.federation.pate import digits_split
from controller.state import build_state
from tests.conftest import ADMIN_TOKEN, LiveServer
from tests.controller.federation.fl_helpers import register_digits_model
from tests.controller.federation.test_flower_e2e import (
    BUDGET,
    TAG,
    Federation,
    _enroll,
    _logs,
    fl_join,
    start_supernode,
)

pytestmark = [pytest.mark.slow, pytest.mark.heavy]


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory, shared_evm: ChainBackend) -> Iterator[Federation]:
    tmp = tmp_path_factory.mktemp("fedpate")
    settings = ControllerSettings(
        data_dir=tmp / "data", admin_token=ADMIN_TOKEN, fl_node_wait_seconds=90, fl_job_timeout_seconds=420,
        _env_file=None,
    )  # fmt: skip
    state = build_state(settings, shared_evm)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with LiveServer(state) as live:
            state.settings.fl_report_url = live.url
            with httpx.Client(base_url=live.url) as http:
                _, model_id = register_digits_model(http)
            devices = [_enroll(state, tmp, n) for n in range(2)]
            yield Federation(live, state, model_id, devices, tmp, procs)
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, 15)
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
        kill_tagged(TAG)
        state.close()


def _private_shard(path: Path, part: int, parts: int) -> None:
    """The device's data: its shard of the controller's private digits pool (disjoint from the public set)."""
    split = digits_split()
    shard = np.array_split(np.arange(len(split.private_y)), parts)[part]
    np.savez(path, x=split.private_x[shard], y=split.private_y[shard])


def test_a_fedpate_job_labels_the_public_set_and_registers_the_student(fed: Federation) -> None:
    a, b = fed.devices
    body = {
        "model": {"model_id": fed.model_id, "network": "digits-linear"},
        "participants": {"device_ids": [a.id, b.id]},
        "min_clients": 2,
        "round_timeout": 180,
        "algorithm": "fedpate",
        "pate": {"num_teachers": 20, "sigma": 6.0, "num_queries": 60, "teacher_epochs": 40, "epsilon": 20.0,
                 "self_training": 1},
    }  # fmt: skip
    with FedgeClient(fed.live.url, ADMIN_TOKEN) as fc:
        created = fc.fl_run(body)
        params = {d.id: fl_join(fed, d.id, timeout=120) for d in (a, b)}
        for part, device in enumerate((a, b)):
            start_supernode(fed, device, params[device.id], part, 2)
            _private_shard(device.dir / "digits.npz", part, 2)  # before the first query reads it
        job = fc.wait_fl_job(created.job_id, timeout=400, poll=1.0)
    assert job.status == "succeeded", (job.error, _logs(fed))
    assert job.spec["algorithm"] == "fedpate" and job.rounds_completed == 1
    [batch] = job.metrics
    assert sorted(batch.participants) == sorted([a.id, b.id]) and batch.budget_refused == []
    train = batch.metrics["train"]
    assert train["pate-teachers"] == 40 and train["pate-queries"] == train["pate-answered"] == 60
    assert 0.5 < train["pate-label-accuracy"] <= 1.0  # 40 teachers of 20 digits, sigma 6
    assert 0 < train["pate-epsilon"] <= train["pate-epsilon-data-independent"] <= 20.0
    assert (
        batch.eval_accuracy is not None and 0.4 < batch.eval_accuracy <= 1.0
    )  # the student, on the test split
    # each device paid for its own noisy votes, and its ledger on disk says so
    assert set(batch.epsilon) == {a.id, b.id} and all(0 < e < BUDGET for e in batch.epsilon.values())
    # the labels' epsilon is the job's; the student is the model's next version, on chain
    assert job.epsilon_spent == pytest.approx(train["pate-epsilon"]) and job.delta == pytest.approx(1e-5)
    assert job.result is not None and job.chain is not None
    record = fed.state.chain.get_fl_run(job.job_id)
    assert record.strategy == "flower:fedpate" and record.final_model_hash.hex() == job.result.sha256
    assert record.dp_epsilon == pytest.approx(job.epsilon_spent, abs=1e-6)
    with FedgeClient(fed.live.url, ADMIN_TOKEN) as fc:
        versions = {v.version: v for v in fc.model_versions(fed.model_id)}
    assert (
        versions[job.result.version].kind == "trained"
        and versions[job.result.version].sha256 == job.result.sha256
    )
