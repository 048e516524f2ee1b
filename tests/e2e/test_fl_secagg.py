"""A SecAgg+ job through real SuperNodes: the live controller supervises its TLS SuperLink (SuperNode
authentication, Fleet-only front); the test plays three enrolled devices, each a real
``flower-supernode`` with its enrolled key, started as its signed ``fl-join`` says, running the FAB's
ClientApp (``round_lock_mod``, then Flower's ``secaggplus_mod`` through ``edge_agent.learning.secagg``).

The job (``privacy.secure_aggregation``: 3 shares, threshold 2) has one round. The third device refuses
rounds without local DP (``fedge-require-dp``): it takes part in the key exchange, then its training
fails, so it drops out after sharing its keys. The round still aggregates the other two (their pairwise
masks with it rebuilt from its shares): the stored result (the registered ``torch.export`` program and the job's final ``.npz``) equals the plaintext FedAvg
of the two survivors' updates, recomputed here from their data, node ids and the job's seed, within the
quantisation bound (``controller.federation.secagg.error_bound``). The 4-device, threshold-3 case and a
rejected masked vector run in process (tests/controller/federation/test_secagg.py). About 2-4 minutes on 2
busy cores: four ``flwr-clientapp`` processes per device for the SecAgg+ train phase, one for evaluate.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from controller.chain.base import ChainBackend
from controller.client import FedgeClient
from controller.config import ControllerSettings
from controller.federation.artifacts import read_program_params
from controller.federation.flower import kill_tagged
from controller.federation.secagg import SecAggSettings, error_bound
from controller.state import ControllerState, build_state
from edge_agent.identity import make_csr
from edge_agent.learning.clientapp import _seed
from edge_agent.learning.data import load_local_data
from edge_agent.learning.models import resolve_factory
from edge_agent.learning.trainer import FitConfig, TorchTrainer
from fedge_common.quiet import QUIET_ENV
from fedge_protocol.federation import NodeKey
from tests.conftest import ADMIN_TOKEN, LiveServer
from tests.controller.federation.fl_helpers import register_digits_model, write_partition

pytestmark = [pytest.mark.slow, pytest.mark.heavy]

BIN = Path(sys.executable).parent
TAG = uuid.uuid4().hex  # every process this module starts carries it (cleanup by PID)
NETWORK, LR, SEED = "digits-linear", 0.5, 7
SECAGG = {"num_shares": 3, "reconstruction_threshold": 2}


@dataclass
class Device:
    id: str
    key: ec.EllipticCurvePrivateKey
    dir: Path
    data: Path | None = None


@dataclass
class Federation:
    live: LiveServer
    state: ControllerState
    model_id: str
    devices: list[Device]
    procs: list[subprocess.Popen[bytes]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory, shared_evm: ChainBackend) -> Iterator[Federation]:
    tmp = tmp_path_factory.mktemp("secagg")
    settings = ControllerSettings(
        data_dir=tmp / "data",
        admin_token=ADMIN_TOKEN,
        fl_node_wait_seconds=120,
        fl_job_timeout_seconds=540,
        _env_file=None,
    )
    state = build_state(settings, shared_evm)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with LiveServer(state) as live:
            state.settings.fl_report_url = live.url  # the ServerApp reports to this live controller
            with httpx.Client(base_url=live.url) as http:
                _, model_id = register_digits_model(http)
            devices = []
            for n in range(3):
                token, _ = state.fleet.mint_enrollment_token({"site": "secagg"}, 600, "admin")
                key = ec.generate_private_key(ec.SECP256R1())
                device_id = state.fleet.enroll(token, make_csr(key), {"site": "secagg"}, {}).device_id
                devices.append(Device(device_id, key, tmp / f"device-{n}"))
            yield Federation(live, state, model_id, devices, procs)
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
        state.close()  # stops the SuperLink and every process it started (by PID)


def _fl_join(fed: Federation, device_id: str, timeout: float = 120) -> dict[str, Any]:
    """The device's fl-join command, verified as the agent verifies it."""
    from edge_agent.link.signed import verify_command

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for command in fed.state.commands.pending(device_id):
            if command.kind == "fl-join":
                envelope = fed.state.commands.signed(command)
                params: dict[str, Any] = verify_command(envelope, fed.state.fleet.ca.certificate, device_id)[
                    "params"
                ]
                return params
        time.sleep(0.2)
    raise AssertionError(f"device {device_id} got no fl-join command in {timeout} s")


def _start_supernode(
    fed: Federation, device: Device, params: dict[str, Any], part: int, *, require_dp: bool
) -> None:
    """What the agent's SuperNode service does with an fl-join command, with the device's own key."""
    home = device.dir / "flwr"
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text("[superlink]\n")
    ca = device.dir / "superlink-ca.pem"
    ca.write_text(params["tls"]["root_certificate"])
    key = device.dir / "supernode-key"
    key.write_bytes(
        device.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
    )
    key.chmod(0o600)
    device.data = write_partition(device.dir / "digits.npz", part, 3)
    config: dict[str, Any] = {
        NodeKey.DATA_PATH: str(device.data),
        NodeKey.STATE_DIR: str(device.dir),
        NodeKey.DATASET_ID: params["data"]["dataset"],
        NodeKey.REQUIRE_DP: require_dp,
    }
    node_config = device.dir / "node-config.toml"
    node_config.write_text("".join(f"{json.dumps(k)} = {json.dumps(v)}\n" for k, v in config.items()))
    argv = [str(BIN / "flower-supernode"), "--superlink", params["superlink"], "--root-certificates", str(ca),
            "--auth-supernode-private-key", str(key), "--host", "127.0.0.1", "--port", str(_free_port()),
            "--node-config", str(node_config), "--isolation", "subprocess"]  # fmt: skip
    env = {**os.environ, **QUIET_ENV, "FLWR_HOME": str(home), "FEDGE_FL_TAG": TAG,
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}  # fmt: skip
    log = open(device.dir / "supernode.log", "ab")  # noqa: SIM115 - the process owns it
    fed.procs.append(
        subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    )


def _logs(fed: Federation) -> str:
    parts = []
    for device in fed.devices:
        log = device.dir / "supernode.log"
        if log.exists():
            parts.append(f"--- {device.id}\n" + log.read_text(errors="replace")[-2500:])
    return "\n".join(parts)


def test_a_secagg_job_survives_a_dropout_and_its_result_is_the_survivors_fedavg(fed: Federation) -> None:
    body = {
        "model": {"model_id": fed.model_id, "network": NETWORK},
        "participants": {"device_ids": [d.id for d in fed.devices]},
        "min_clients": 3,
        "rounds": 1,
        "lr": LR,
        "seed": SEED,
        "round_timeout": 240,
        "privacy": {"secure_aggregation": SECAGG},
    }
    with FedgeClient(fed.live.url, ADMIN_TOKEN) as fc:
        created = fc.fl_run(body)
        params = {d.id: _fl_join(fed, d.id) for d in fed.devices}
        for part, device in enumerate(fed.devices):
            _start_supernode(fed, device, params[device.id], part, require_dp=part == 2)
        job = fc.wait_fl_job(created.job_id, timeout=500, poll=1.0)
    assert job.status == "succeeded", (job.error, _logs(fed))
    settings = SecAggSettings(**job.privacy["secure_aggregation"])
    assert (settings.num_shares, settings.reconstruction_threshold) == (3, 2)

    survivors, dropped = fed.devices[:2], fed.devices[2]
    (r,) = job.metrics
    assert sorted(r.participants) == sorted(d.id for d in survivors), r
    assert dropped.id in r.stragglers and r.failures == 1 and r.rejected == [] and r.budget_refused == []
    assert set(r.evaluated) <= {d.id for d in fed.devices}  # (evaluation needs no DP; timing on busy cores)
    assert r.bytes_out > 0 and r.bytes_in > 0

    # the plaintext FedAvg of the survivors' round-1 updates, recomputed from their data and node ids
    nodes = {p.device_id: int(p.node_id or 0) for p in job.participants}
    model = resolve_factory(NETWORK)(SEED)
    initial = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    fits = []
    for device in survivors:
        assert device.data is not None
        cfg = FitConfig(epochs=1, batch_size=32, lr=LR, seed=_seed(SEED, 1, nodes[device.id]))
        fits.append(TorchTrainer(resolve_factory(NETWORK), load_local_data(device.data)).fit(initial, cfg))
    weights = [f.num_examples for f in fits]
    expected = {
        k: np.sum([w * f.params[k].astype(np.float64) for w, f in zip(weights, fits, strict=True)], axis=0)
        / sum(weights)
        for k in initial
    }
    final = fed.state.federation.workdir(job.job_id) / "output" / "final.npz"
    with np.load(final) as npz:
        got = {k: npz[k] for k in npz.files}
    assert set(got) == set(expected)
    bound = error_bound(settings, weights, max(float(np.abs(v).max()) for v in expected.values())) + 1e-6
    worst = max(float(np.abs(got[k] - expected[k]).max()) for k in got)
    assert 0 < worst <= bound, (worst, bound)
    assert max(float(np.abs(got[k] - initial[k]).max()) for k in got) > 100 * bound  # it trained

    # the registered result is that aggregate
    assert job.result is not None
    with FedgeClient(fed.live.url, ADMIN_TOKEN) as fc:
        program = final.parent / "result.pt2"
        fc.download_model(fed.model_id, program, version=job.result.version)
    stored = read_program_params(program)
    assert all(np.array_equal(stored[k], got[k]) for k in got)
