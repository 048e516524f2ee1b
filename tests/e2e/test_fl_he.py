"""HE aggregation end to end with real agents: the live controller of ``tests/e2e/test_fl.py`` (TLS
SuperLink with SuperNode authentication behind the Fleet-only front) and three enrolled ``fedge-agent run``
processes with FL enabled, each with its own digits partition. One FedAvg job with ``privacy.he``
(CKKS, pairwise masking) and local DP (epsilon 8) runs through their SuperNodes:

* the key set is made by one device and sealed to the other two devices' enrolled keys; every agent ends
  with the same secret context in its state directory, and nothing the controller stores (its data
  directory: database, SuperLink state, job work directories, artifacts) holds a piece of the secret key;
* the ServerApp received ciphertexts only (bytes in per round: 8x the float32 model per client);
* the decrypted final aggregate is the model's next version, on chain with ``he_enabled``.

Every process started here carries ``FEDGE_FL_TAG`` and is ended by PID. About 2 minutes on 2 cores.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from controller.chain.base import ChainBackend
from controller.client import FedgeClient
from controller.config import ControllerSettings
from controller.federation.flower import kill_tagged
from controller.state import build_state
from edge_agent.identity import enroll
from simulator.fl.partition import make_federated_digits
from tests.conftest import ADMIN_TOKEN, LiveServer
from tests.controller.federation.fl_helpers import register_digits_model
from tests.e2e.test_fl import QUIET, AgentProc, _healthy
from tests.fixtures.services import free_port, wait_for

pytestmark = pytest.mark.slow

TAG = uuid.uuid4().hex
BUDGET, EPSILON, DELTA = 20.0, 8.0, 1e-5


@pytest.fixture(scope="module")
def he_fleet(tmp_path_factory: pytest.TempPathFactory, shared_evm: ChainBackend) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("fl-he-e2e")
    settings = ControllerSettings(
        data_dir=tmp / "controller",
        admin_token=ADMIN_TOKEN,
        fl_node_wait_seconds=90,
        fl_job_timeout_seconds=600,
        _env_file=None,
    )
    state = build_state(settings, shared_evm)
    agents: list[AgentProc] = []
    parts = make_federated_digits(3, alpha=None, seed=0).write(tmp / "partitions")
    try:
        with LiveServer(state) as live:
            state.settings.fl_report_url = live.url
            import httpx

            with httpx.Client(base_url=live.url, timeout=30) as http:
                _, model_id = register_digits_model(http)
            with FedgeClient(live.url, ADMIN_TOKEN) as fc:
                for k, part in enumerate(parts):
                    state_dir = tmp / f"agent-{k}" / "state"
                    token = fc.enrollment_token({"fl-he": TAG[:8]}, ttl_seconds=600).token
                    identity = enroll(live.url, token, state_dir, {"slot": str(k)}, {"cpu_count": 1})
                    env = {**os.environ, **QUIET, "FEDGE_FL_TAG": TAG,
                           "FEDGE_AGENT_FL_ENABLED": "true", "FEDGE_AGENT_FL_DATA_PATH": str(part),
                           "FEDGE_AGENT_FL_DATASET": "digits", "FEDGE_AGENT_FL_PRIVACY_BUDGET": str(BUDGET),
                           "FEDGE_AGENT_FL_PRIVACY_DELTA": str(DELTA)}  # fmt: skip
                    agents.append(AgentProc(k, identity.device_id, state_dir, part, free_port(), env))
            for agent in agents:
                agent.start()
            for agent in agents:
                wait_for(partial(_healthy, agent), 60, f"agent {agent.index}'s local API")
            yield {"live": live, "state": state, "model_id": model_id, "agents": agents, "tmp": tmp}
    finally:
        for agent in agents:
            if agent.proc is not None and agent.proc.poll() is None:
                agent.proc.send_signal(signal.SIGTERM)
        for agent in agents:
            if agent.proc is None:
                continue
            try:
                agent.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(agent.proc.pid, signal.SIGKILL)
                agent.proc.wait(10)
        kill_tagged(TAG)
        state.close()


def _files(root: Path) -> Iterator[Path]:
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            yield path


@pytest.mark.heavy  # over 20 s on 2 cores: make test-heavy (CI runs it)
def test_three_agents_train_under_he_with_masking_and_local_dp_and_the_controller_holds_no_secret(
    he_fleet: dict[str, Any],
) -> None:
    import tenseal as ts

    agents: list[AgentProc] = he_fleet["agents"]
    ids = [a.device_id for a in agents]
    body = {
        "model": {"model_id": he_fleet["model_id"], "network": "digits-linear"},
        "participants": {"device_ids": ids},
        "min_clients": 3,
        "rounds": 2,
        "lr": 0.5,
        "round_timeout": 180,
        "privacy": {
            "dp": {"epsilon": EPSILON, "delta": DELTA, "max_grad_norm": 1.0},
            "he": {"masking": True},
        },
    }
    with FedgeClient(he_fleet["live"].url, ADMIN_TOKEN) as fc:
        began = time.monotonic()
        created = fc.fl_run(body)
        job = fc.wait_fl_job(created.job_id, timeout=560, poll=1.0)
        seconds = time.monotonic() - began
        logs = "\n".join(a.tail() for a in agents)
        assert job.status == "succeeded", (job.error, logs)
        assert job.privacy["he"]["masking"] is True

        # every round aggregated the three devices' encrypted updates
        assert job.rounds_completed == 2 and [r.round for r in job.metrics] == [1, 2]
        model_bytes = 4 * (64 * 10 + 10)  # digits-linear, float32
        for r in job.metrics:
            assert sorted(r.participants) == sorted(r.evaluated) == sorted(ids), r
            assert r.rejected == [] and r.failures == 0 and r.train_loss is not None
            assert set(r.epsilon) == set(ids)
            # the train replies were ciphertext chunks: one per 2,048 values, ~8x the float32 model
            assert r.bytes_in >= 3 * 5 * model_bytes, r.bytes_in
        assert job.metrics[-1].eval_accuracy is not None and job.metrics[-1].eval_accuracy > 0.3

        # the result is the decrypted final aggregate, registered and on chain with he_enabled
        assert job.result is not None and job.result.model_id == he_fleet["model_id"]
        assert job.chain is not None and job.chain.he_enabled
        assert job.chain.final_model_hash == job.result.sha256

    # one key set, held by the three devices
    secrets = [next((a.state_dir / "he").glob("*.ctx")).read_bytes() for a in agents]
    assert len(set(secrets)) == 1
    secret_key = ts.context_from(secrets[0]).serialize(save_public_key=False, save_secret_key=True)
    probes = [
        secret_key[i : i + 48]
        for i in range(len(secret_key) // 4, len(secret_key) - 48, len(secret_key) // 4)
    ]
    # nothing the controller stores holds a piece of the secret key (nor the device's secret context file)
    scanned = 0
    for path in _files(he_fleet["tmp"] / "controller"):
        data = path.read_bytes()
        scanned += 1
        assert not any(p in data for p in probes), path
        assert secrets[0][-64:] not in data, path
    assert scanned > 0
    print(f"\nHE e2e: job {seconds:.1f} s, accuracy {[r.eval_accuracy for r in job.metrics]}, "
          f"bytes in per round {[r.bytes_in for r in job.metrics]}, {scanned} controller files scanned")  # fmt: skip
    assert np.isfinite(seconds)
