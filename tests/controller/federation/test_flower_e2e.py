"""A real federation: the controller (live HTTP) supervises a TLS flower-superlink with SuperNode
authentication behind its Fleet-only front, and the test plays the agents: it reads each device's signed
``fl-join`` command and starts a real ``flower-supernode`` with the device's enrolled EC P-256 key (in
OpenSSH format), exactly as the command says. A 2-round job completes with every round stored; its
result is a new model version with a chain record; a revoked device's key is refused by the SuperLink;
the front refuses the Control API; the SuperLink listens on loopback only.

One SuperLink for the module (about 3-4 s to start); the job is the long part (one flwr-clientapp
process per message: about a minute on 2 busy cores).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from controller.chain.base import ChainBackend, participant_hash
from controller.client import FedgeClient
from controller.config import ControllerSettings
from controller.federation.flower import FlowerEngine, kill_tagged
from controller.state import ControllerState, build_state
from edge_agent.identity import make_csr
from tests.conftest import ADMIN_TOKEN, LiveServer, fedge_cli
from tests.controller.federation.fl_helpers import ADMIN, register_digits_model, write_partition

pytestmark = [pytest.mark.slow, pytest.mark.heavy]

BIN = Path(sys.executable).parent
TAG = uuid.uuid4().hex  # every process this module starts carries it (cleanup by PID)
QUIET = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "DO_NOT_TRACK": "1",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
}
BUDGET = 20.0
TIMINGS: dict[str, float] = {}


@dataclass
class Device:
    id: str
    key: ec.EllipticCurvePrivateKey
    dir: Path


@dataclass
class Federation:
    live: LiveServer
    state: ControllerState
    model_id: str
    devices: list[Device]
    tmp: Path
    procs: list[subprocess.Popen[bytes]]

    @property
    def engine(self) -> FlowerEngine:
        engine = self.state.federation.engine
        assert isinstance(engine, FlowerEngine)
        return engine

    def ctx(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        ctx.load_verify_locations(cadata=self.engine.tls.ca_pem.decode())
        return ctx


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _enroll(state: ControllerState, tmp: Path, n: int) -> Device:
    token, _ = state.fleet.mint_enrollment_token({"site": "lab"}, 600, "admin")
    key = ec.generate_private_key(ec.SECP256R1())
    device_id = state.fleet.enroll(token, make_csr(key), {"site": "lab"}, {}).device_id
    return Device(device_id, key, tmp / f"device-{n}")


def start_supernode(fed: Federation, device: Device, params: dict[str, Any], part: int, parts: int,
                    *, extra: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:  # fmt: skip
    """What the agent's SuperNode service does with an fl-join command, with the device's own key."""
    home = device.dir / "flwr"
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text("[superlink]\n")
    ca = device.dir / "superlink-ca.pem"
    ca.write_text(params["tls"]["root_certificate"])
    key = device.dir / "supernode-key"
    key.write_bytes(device.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                             serialization.NoEncryption()))  # fmt: skip
    key.chmod(0o600)
    data = write_partition(device.dir / "digits.npz", part, parts)
    node_config = device.dir / "node-config.toml"
    node_config.write_text(
        f'"fedge-data-path" = {json.dumps(str(data))}\n"fedge-state-dir" = {json.dumps(str(device.dir))}\n'
        f'"fedge-dataset-id" = {json.dumps(params["data"]["dataset"])}\n"fedge-privacy-budget" = {BUDGET}\n'
        f'"fedge-privacy-delta" = {params["privacy"]["delta"] or 1e-5}\n'
    )
    argv = [str(BIN / "flower-supernode"), "--superlink", params["superlink"], "--root-certificates", str(ca),
            "--auth-supernode-private-key", str(key), "--host", "127.0.0.1", "--port", str(_free_port()),
            "--node-config", str(node_config), "--isolation", "subprocess", *extra]  # fmt: skip
    env = {**os.environ, **QUIET, "FLWR_HOME": str(home), "FEDGE_FL_TAG": TAG,
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}  # fmt: skip
    log = open(device.dir / "supernode.log", "ab")  # noqa: SIM115 - the process owns it
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    fed.procs.append(proc)
    return proc


def fl_join(fed: Federation, device_id: str, timeout: float = 60) -> dict[str, Any]:
    """The device's newest fl-join command (as the agent verifies it)."""
    from edge_agent.link.signed import verify_command

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for command in fed.state.commands.pending(device_id):
            if command.kind == "fl-join":
                envelope = fed.state.commands.signed(command)
                payload = verify_command(envelope, fed.state.fleet.ca.certificate, device_id)
                params: dict[str, Any] = payload["params"]
                return params
        time.sleep(0.2)
    raise AssertionError(f"device {device_id} got no fl-join command in {timeout} s")


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory, shared_evm: ChainBackend) -> Iterator[Federation]:
    tmp = tmp_path_factory.mktemp("federation")
    settings = ControllerSettings(
        data_dir=tmp / "data",
        admin_token=ADMIN_TOKEN,
        fl_node_wait_seconds=90,
        fl_job_timeout_seconds=420,
        _env_file=None,
    )
    state = build_state(settings, shared_evm)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with LiveServer(state) as live:
            state.settings.fl_report_url = live.url  # the ServerApp reports to this live controller
            with httpx.Client(base_url=live.url) as http:
                _, model_id = register_digits_model(http)
            devices = [_enroll(state, tmp, n) for n in range(3)]
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
        state.close()  # stops the SuperLink and every process it started (by PID)
        if TIMINGS:
            print(f"\nFL timings: {json.dumps(TIMINGS)}")


def test_the_superlink_starts_with_tls_and_listens_on_loopback_only(fed: Federation) -> None:
    began = time.monotonic()
    fed.state.federation.ready_engine()
    TIMINGS["engine_start_s"] = round(time.monotonic() - began, 2)
    superlink = fed.engine.superlink
    assert superlink is not None and superlink.started_in is not None
    TIMINGS["superlink_healthy_s"] = round(superlink.started_in, 2)
    port = superlink.port
    listening = _listening(port)
    assert listening == {"127.0.0.1"}, listening
    for address in _other_addresses():  # the host's other addresses: nothing answers there
        with pytest.raises(OSError), socket.create_connection((address, port), timeout=2):
            pass
    with httpx.Client(verify=fed.ctx()) as http:
        assert http.get(f"https://127.0.0.1:{port}/health").status_code == 200
    with pytest.raises(httpx.ConnectError), httpx.Client(verify=True) as http:
        http.get(f"https://127.0.0.1:{port}/health")  # not a publicly trusted certificate: the device CA's
    cmd = " ".join(superlink.command())
    assert "--enable-supernode-auth" in cmd and "--disable-runtime-dependency-installation" in cmd


def test_the_fleet_front_forwards_fleet_routes_and_refuses_control(fed: Federation) -> None:
    front = fed.engine.front.address
    control = fed.engine.superlink_address
    headers = {"content-type": "application/protobuf"}
    with httpx.Client(verify=fed.ctx(), timeout=10) as http:
        assert http.get(f"https://{front}/health").status_code == 200
        for path in ("/v1/control/list-runs", "/v1/control/register-node", "/v1/runtime/get-nodes", "/docs"):
            r = http.post(f"https://{front}{path}", content=b"", headers=headers)
            assert r.status_code == 404 and r.text == "not exposed to devices", path
        assert (
            http.post(f"https://{control}/v1/control/list-runs", content=b"", headers=headers).status_code
            == 200
        )
        r = http.post(f"https://{front}/v1/fleet/pull-messages", content=b"", headers=headers)
        assert r.status_code in (400, 401, 422)  # reached the SuperLink, which wants a signed request


def test_a_two_round_job_completes_with_metrics_a_registered_result_and_a_chain_record(
    fed: Federation,
) -> None:
    a, b, c = fed.devices
    body = {
        "model": {"model_id": fed.model_id, "network": "digits-linear"},
        "participants": {"device_ids": [a.id, b.id, c.id]},
        "min_clients": 2,
        "rounds": 2,
        "lr": 0.5,
        "round_timeout": 120,
        "privacy": {"dp": {"epsilon": 8.0, "delta": 1e-5, "max_grad_norm": 1.0}},
    }
    with FedgeClient(fed.live.url, ADMIN_TOKEN) as fc:
        created = fc.fl_run(body)
        assert created.min_clients == 2 and len(created.participants) == 3
        t0 = time.monotonic()
        params = {d.id: fl_join(fed, d.id, timeout=120) for d in (a, b, c)}
        TIMINGS["submit_to_invited_s"] = round(time.monotonic() - t0, 2)
        joined = params[a.id]
        assert joined["job_id"] == created.job_id and joined["node_auth"] and joined["node_id"]
        assert joined["superlink"] == fed.engine.front.address and joined["network"] == "digits-linear"
        assert joined["privacy"] == {"local_dp": True, "target_epsilon": 8.0, "delta": 1e-5, "max_grad_norm": 1.0,
                                     "accountant": "prv", "central_dp": False}  # fmt: skip
        start_supernode(fed, a, params[a.id], 0, 2)
        start_supernode(fed, b, params[b.id], 1, 2)
        # device c never starts: it is revoked mid-job, and its key is refused from then on
        _revoked_key_is_refused(fed, c, params[c.id])
        job = fc.wait_fl_job(created.job_id, timeout=400, poll=1.0)
        TIMINGS["job_wall_s"] = round(time.monotonic() - t0, 2)
    assert job.status == "succeeded", (job.error, _logs(fed))
    assert job.rounds_completed == 2 and [r.round for r in job.metrics] == [1, 2]
    for r in job.metrics:
        assert sorted(r.participants) == sorted([a.id, b.id]) and sorted(r.evaluated) == sorted([a.id, b.id])
        assert r.train_loss is not None and r.eval_loss is not None and 0 <= (r.eval_accuracy or -1) <= 1
        assert r.bytes_out > 0 and r.bytes_in > 0 and r.budget_refused == []
        assert set(r.epsilon) == {a.id, b.id} and all(0 < e <= 8.0 + 1e-6 for e in r.epsilon.values())
        assert c.id not in r.stragglers  # revoked, not late
    parts = {p.device_id: p for p in job.participants}
    assert parts[a.id].state == parts[b.id].state == "trained" and parts[c.id].state == "revoked"
    assert job.epsilon_spent == max(parts[a.id].epsilon or 0, parts[b.id].epsilon or 0)
    # the result: a new trained version (torch.export program), hashed and recorded
    assert job.result is not None and job.result.model_id == fed.model_id
    with FedgeClient(fed.live.url, ADMIN_TOKEN) as fc:
        versions = {v.version: v for v in fc.model_versions(fed.model_id)}
        result = versions[job.result.version]
        assert result.kind == "trained" and result.format == "pytorch" and result.filename == "model.pt2"
        assert result.sha256 == job.result.sha256
        assert fc.model_provenance(fed.model_id).verified
        mirror = fc.device_privacy(a.id)
    assert mirror.datasets[0].dataset == "digits" and mirror.datasets[0].rounds == 2
    assert mirror.datasets[0].epsilon_spent == parts[a.id].epsilon
    assert mirror.datasets[0].budget_remaining == pytest.approx(BUDGET - (parts[a.id].epsilon or 0), abs=1e-6)
    # the chain record of the run
    assert job.chain is not None
    record = fed.state.chain.get_fl_run(job.job_id)
    assert record.final_model_hash.hex() == job.result.sha256 == job.chain.final_model_hash
    assert sorted(record.participant_hashes) == sorted([participant_hash(a.id), participant_hash(b.id)])
    assert record.rounds == 2 and record.strategy == "flower:fedavg" and record.model_id == fed.model_id
    assert record.dp_epsilon == pytest.approx(
        job.epsilon_spent, abs=1e-6
    ) and record.dp_delta == pytest.approx(1e-5)
    assert job.chain.tx_hash.startswith("0x")
    # every invited device is told the job is over
    for device in (a, b):
        kinds = [cmd.kind for cmd in fed.state.commands.pending(device.id)]
        assert "fl-leave" in kinds
    FIRST_JOB.append(job.job_id)


FIRST_JOB: list[str] = []


def _revoked_key_is_refused(fed: Federation, device: Device, params: dict[str, Any]) -> None:
    """Revoke the device (the controller unregisters its node at once); its SuperNode is refused."""
    with httpx.Client(base_url=fed.live.url, headers=ADMIN) as http:
        assert http.delete(f"/v1/devices/{device.id}").status_code == 204
    node_id = int(params["node_id"])
    status = {n.node_id: n.status for n in fed.engine.control.nodes()}
    assert status[node_id] == "unregistered"
    proc = start_supernode(fed, device, params, 0, 2, extra=("--max-retries", "1", "--max-wait-time", "15"))
    try:
        code = proc.wait(90)
    except subprocess.TimeoutExpired:
        pytest.fail("the revoked device's SuperNode was not refused")
    assert code != 0
    log = (device.dir / "supernode.log").read_text(errors="replace")
    assert "Failed to activate" in log or "401" in log or "authentication" in log.lower(), log[-2000:]


def test_the_cli_lists_and_watches_fl_jobs_as_json(fed: Federation) -> None:
    if not FIRST_JOB:
        pytest.fail("needs the job of the previous test, which did not finish: run the module whole")
    job_id = FIRST_JOB[0]
    watched = fedge_cli(fed.live, "fl", "watch", job_id, "--json")
    assert watched.returncode == 0, watched.stderr
    assert json.loads(watched.stdout)["status"] == "succeeded" and "succeeded: model" in watched.stderr
    listed = fedge_cli(fed.live, "fl", "list", "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout)["items"][0]["job_id"] == job_id
    table = fedge_cli(fed.live, "fl", "list")
    assert job_id in table.stdout and "succeeded" in table.stdout


def _listening(port: int) -> set[str]:
    """Local addresses with a listening TCP socket on ``port`` (from /proc/net/tcp and tcp6)."""
    found = set()
    for name in ("tcp", "tcp6"):
        path = Path(f"/proc/net/{name}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            local, state = fields[1], fields[3]
            address, _, hex_port = local.partition(":")
            if state != "0A" or int(hex_port, 16) != port:
                continue
            if name == "tcp":
                found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
            else:
                found.add(address)
    return found


def _other_addresses() -> list[str]:
    """This host's non-loopback IPv4 addresses (a UDP socket picks the outgoing one; no packet is sent)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))
            address = str(s.getsockname()[0])
    except OSError:
        return []
    return [] if address.startswith("127.") else [address]


def _logs(fed: Federation) -> str:
    parts = []
    superlink = fed.engine.superlink
    if superlink is not None:
        parts.append("superlink: " + superlink.log_tail(15))
    for device in fed.devices:
        log = device.dir / "supernode.log"
        if log.exists():
            parts.append(f"{device.id}: " + log.read_text(errors="replace")[-1500:])
    return "\n".join(parts)


def test_the_result_is_the_stored_program_and_translates_to_onnx(fed: Federation, tmp_path: Path) -> None:
    if not FIRST_JOB:
        pytest.fail("needs the job of the previous test, which did not finish: run the module whole")
    with FedgeClient(fed.live.url, ADMIN_TOKEN) as fc:
        job = fc.fl_job(FIRST_JOB[0])
        assert job.result is not None
        sha = fc.download_model(fed.model_id, tmp_path / "model.pt2", version=job.result.version)
        began = time.monotonic()
        onnx = fc.translate(fed.model_id, source_version=job.result.version)
        TIMINGS["translate_s"] = round(time.monotonic() - began, 2)
    assert sha == job.result.sha256 == hashlib.sha256((tmp_path / "model.pt2").read_bytes()).hexdigest()
    assert onnx.framework == "pytorch" and onnx.source_version == job.result.version
    assert onnx.max_abs_diff is not None and onnx.max_abs_diff <= onnx.tolerance
    assert onnx.onnx_accuracy is not None


def test_every_round_of_the_job_is_on_chain_and_its_audit_verifies(fed: Federation) -> None:
    """docs/fl-audit.md under real SuperNodes: each device's audit mod checked its inclusion proof against
    the root read back from the chain (its receipts), and ``fedge fl audit`` verifies the whole job."""
    if not FIRST_JOB:
        pytest.fail("needs the job of the previous test, which did not finish: run the module whole")
    from tests.controller.federation.test_fl_audit import check_job_audit

    check_job_audit(fed.live, FIRST_JOB[0], {d.id: d.dir for d in fed.devices[:2]})
