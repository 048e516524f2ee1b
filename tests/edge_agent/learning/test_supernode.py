"""The FL SuperNode as a supervised child process of the agent.

Fast tests drive :class:`SupernodeService` with a stand-in ``flower-supernode`` (a script that records
its command line and environment, starts a child in its process group and a ``flwr-clientapp``-like one
in its own session naming the Runtime port, prints a node id, then sleeps, crashes or is refused). The
slow ones start a real ``flower-superlink`` with TLS (a server certificate signed by the test device CA
that the agent pinned) and ``--enable-supernode-auth``, register the device's key through the Control
API, and let the real ``flower-supernode`` join (or be refused), and run one real FedAvg round whose
ClientApp (the device's, wrapped in the round-lock mod) holds the agent's update lock.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edge_agent.grid import CommandRunner
from edge_agent.identity import CERT_FILE, KEY_FILE
from edge_agent.learning import supernode as sn
from edge_agent.learning.supernode import (
    DeviceData,
    Membership,
    SupernodeConfig,
    SupernodeError,
    SupernodeService,
    group_members,
    processes_naming,
)
from edge_agent.process import AgentProcess, RestartPolicy
from tests.edge_agent.learning.devices import (
    Ca,
    device_public_pem,
    enroll,
    join_params,
    make_ca,
    server_cert,
    write_data,
)

FAKE = textwrap.dedent(
    """\
    import json, os, subprocess, sys, time
    args = sys.argv[1:]
    port = args[args.index("--port") + 1]
    with open(os.environ["FAKE_RECORD"], "a") as fh:
        fh.write(json.dumps({"argv": args, "env": {k: v for k, v in os.environ.items()
                             if k.startswith(("FLWR", "RAY", "DO_NOT", "PATH"))}}) + "\\n")
    sleeper = "import time; time.sleep(600)"
    if os.environ.get("FAKE_STUBBORN"):  # children that ignore SIGTERM: only SIGKILL ends them
        sleeper = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
    subprocess.Popen([sys.executable, "-c", sleeper, "superexec-like"])
    subprocess.Popen([sys.executable, "-c", sleeper, "--clientappio-api-address", "127.0.0.1:" + port],
                     start_new_session=True)
    mode = os.environ.get("FAKE_MODE", "run")
    if mode == "refused":  # what flwr 1.42 prints (flwr_exit), then uvicorn's shutdown chatter
        print("\x1b[91mERROR \x1b[0m:     Exit Code: 305", flush=True)
        print("Failed to initialize the connection to the SuperLink.", flush=True)
        print("[code: 2004] Failed to activate SuperNode.", flush=True)
        print("", flush=True)
        print("For more information, visit: <https://flower.ai/docs/framework/1.42/en/ref-exit-codes/305.html>")
        print("INFO:     Shutting down", flush=True)
        sys.exit(1)
    print("\\x1b[92mINFO \\x1b[0m:      SuperNode ID: 4242", flush=True)
    if mode == "crash":
        time.sleep(0.3)
        sys.exit(1)
    time.sleep(600)
    """
)


@dataclass
class Device:
    state: Path
    data: Path
    records: list[dict[str, Any]]

    def record(self, body: dict[str, Any]) -> int:
        self.records.append(body)
        return len(self.records)


@pytest.fixture
def ca() -> Ca:
    return make_ca()


@pytest.fixture
def device(tmp_path: Path, ca: Ca) -> Device:
    state = tmp_path / "state"
    enroll(state, ca)
    return Device(state, write_data(tmp_path / "data" / "digits.npz"), [])


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    script = tmp_path / "fake-supernode"
    script.write_text(f"#!{sys.executable}\n" + FAKE)
    script.chmod(0o755)
    monkeypatch.setenv("FAKE_RECORD", str(tmp_path / "fake-calls.jsonl"))
    return script


def _calls(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "fake-calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _config(ca: Ca, superlink: str = "127.0.0.1:9093") -> SupernodeConfig:
    return SupernodeConfig(superlink=superlink, root_certificate=ca.pem)


def _member(job: str = "job-1", command: str = "c-1", leave_after: float | None = None) -> Membership:
    return Membership(job_id=job, command_id=command, leave_after=leave_after)


def _service(device: Device, program: Path | None = None, **kw: Any) -> SupernodeService:
    kw.setdefault("connect_timeout", 20.0)
    kw.setdefault("grace", 3.0)
    return SupernodeService(
        device.state,
        DeviceData(path=device.data, dataset="digits", budget_epsilon=2.5),
        record=device.record,
        executable=str(program) if program is not None else None,
        **kw,
    )


def _gone(pids: list[int], port: int | None) -> bool:
    alive = [p for p in pids if sn._stat(p) is not None and sn._stat(p)[0] not in "ZX"]  # type: ignore[index]
    return not alive and (port is None or not processes_naming(f"127.0.0.1:{port}"))


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


# ------------------------------------------------------------------ the device key in OpenSSH format
def test_the_openssh_export_is_the_enrolled_device_key(device: Device) -> None:
    dest = device.state / "fl" / "supernode-key"
    dest.parent.mkdir(mode=0o700)

    sn.write_openssh_key(device.state, dest)

    exported = serialization.load_ssh_private_key(dest.read_bytes(), password=None)
    original = serialization.load_pem_private_key((device.state / KEY_FILE).read_bytes(), password=None)
    assert isinstance(exported, ec.EllipticCurvePrivateKey) and isinstance(exported.curve, ec.SECP256R1)
    assert isinstance(original, ec.EllipticCurvePrivateKey)
    assert exported.private_numbers() == original.private_numbers()
    assert dest.read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    # the certificate the controller registers holds the same public key
    from cryptography import x509

    cert = x509.load_pem_x509_certificate((device.state / CERT_FILE).read_bytes())
    ssh_pub = serialization.load_ssh_public_key(sn.openssh_public_key(device.state))
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    assert ssh_pub.public_bytes(serialization.Encoding.DER, spki) == cert.public_key().public_bytes(
        serialization.Encoding.DER, spki
    )
    # a second export of the same key keeps the file (no churn); another key replaces it
    before = dest.read_bytes()
    sn.write_openssh_key(device.state, dest)
    assert dest.read_bytes() == before


def test_a_device_key_that_is_not_p256_is_refused(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    tmp_path.joinpath(KEY_FILE).write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(SupernodeError, match="P-256"):
        sn.openssh_private_key(tmp_path)


# ------------------------------------------------------------------ node config
def test_the_node_config_carries_the_clientapp_keys_and_parses_as_flower_reads_it(device: Device) -> None:
    data = DeviceData(path=device.data, dataset='my digits "v2"', budget_epsilon=2.5, require_dp=True)
    config = sn.node_config(device.state, data)
    path = device.state / "node-config.toml"
    path.write_text(sn.render_node_config(config))

    assert config == {
        "fedge-data-path": str(device.data.resolve()),
        "fedge-state-dir": str(device.state.resolve()),
        "fedge-dataset-id": 'my digits "v2"',
        "fedge-privacy-budget": 2.5,
        "fedge-privacy-delta": 1e-5,
        "fedge-privacy-accountant": "prv",
        "fedge-require-dp": True,
    }
    flwr_config = importlib.import_module("flwr.common.config")
    assert flwr_config.parse_config_args([str(path)]) == config


def test_the_node_config_keys_are_the_clientapps() -> None:
    importlib.import_module("torch")
    importlib.import_module("flwr")
    from edge_agent.learning import clientapp, roundlock

    assert (sn.NODE_DATA_PATH, sn.NODE_STATE_DIR, sn.NODE_DATASET_ID) == (
        clientapp.NODE_DATA_PATH,
        clientapp.NODE_STATE_DIR,
        clientapp.NODE_DATASET_ID,
    )
    assert (
        sn.NODE_PRIVACY_BUDGET,
        sn.NODE_PRIVACY_DELTA,
        sn.NODE_PRIVACY_ACCOUNTANT,
        sn.NODE_REQUIRE_DP,
    ) == (
        clientapp.NODE_PRIVACY_BUDGET,
        clientapp.NODE_PRIVACY_DELTA,
        clientapp.NODE_PRIVACY_ACCOUNTANT,
        clientapp.NODE_REQUIRE_DP,
    )
    assert roundlock.NODE_STATE_DIR == clientapp.NODE_STATE_DIR


# ------------------------------------------------------------------ the child process (stand-in program)
def test_the_supernode_runs_with_the_agents_flags_home_and_environment(
    device: Device, ca: Ca, fake: Path, tmp_path: Path
) -> None:
    service = _service(device, fake)
    service.start()
    try:
        outcome = service.join("c-1", _config(ca, "ctl.example:9093"), _member())
        assert outcome.connected and outcome.node_id == 4242
        [call] = _calls(tmp_path)
    finally:
        service.stop()

    argv, env = call["argv"], call["env"]
    flag = {argv[i]: argv[i + 1] for i in range(len(argv) - 1) if argv[i].startswith("--")}
    fl = device.state / "fl"
    assert flag["--superlink"] == "ctl.example:9093"
    assert Path(flag["--root-certificates"]).read_text() == ca.pem
    assert flag["--host"] == "127.0.0.1" and int(flag["--port"]) == outcome.runtime_port
    assert flag["--auth-supernode-private-key"] == str(fl / "supernode-key")
    assert flag["--node-config"] == str(fl / "node-config.toml")
    assert "--insecure" not in argv and "--allow-runtime-dependency-installation" not in argv
    assert env["FLWR_HOME"] == str(fl / "flwr-home")
    assert "[superlink]" in (fl / "flwr-home" / "config.toml").read_text()
    assert env["FLWR_TELEMETRY_ENABLED"] == "0" and env["FLWR_DISABLE_UPDATE_CHECK"] == "1"
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    assert "SuperNode ID: 4242" in (fl / "supernode.log").read_text()
    assert not (fl / "supernode-key").exists()  # the key export lives only while the SuperNode runs
    assert json.loads((fl / "joins.json").read_text())["jobs"][0]["job_id"] == "job-1"


def test_stop_ends_the_supernode_and_every_process_it_started(
    device: Device, ca: Ca, fake: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_STUBBORN", "1")
    service = _service(device, fake, grace=1.0)
    service.start()
    outcome = service.join("c-1", _config(ca), _member())
    assert outcome.pid is not None and outcome.runtime_port is not None
    port_users = processes_naming(f"127.0.0.1:{outcome.runtime_port}")
    _wait(lambda: len(group_members(outcome.pid)) >= 2, 10, "the stand-in's child")  # type: ignore[arg-type]
    family = group_members(outcome.pid) + port_users
    assert port_users and len(family) >= 3  # itself, a child in its group, one in its own session

    service.stop()

    assert _gone(family, outcome.runtime_port)
    assert sn.read_status(device.state)["alive"] is False  # type: ignore[index]


def test_an_agent_killed_with_its_supernode_running_ends_it_at_the_next_start(
    device: Device, ca: Ca, fake: Path
) -> None:
    first = _service(device, fake)
    first.start()
    outcome = first.join("c-1", _config(ca), _member())
    old = group_members(outcome.pid) + processes_naming(f"127.0.0.1:{outcome.runtime_port}")  # type: ignore[arg-type]
    first.rounds.stop()  # the agent "dies": nothing else of it runs

    second = _service(device, fake)
    second.start()  # kills the orphan, then rejoins from joins.json
    try:
        assert _gone(old, outcome.runtime_port)
        assert [m.job_id for m in second.memberships()] == ["job-1"]
        _wait(lambda: second.healthy() and second.status()["node_id"] == 4242, 20, "the rejoin")
    finally:
        second.stop()


def test_a_crashing_supernode_is_restarted_with_backoff_then_given_up_without_ending_the_agent(
    device: Device, ca: Ca, fake: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    service = _service(device, fake, policy=RestartPolicy(limit=3, window=120, delay=0.05))
    service.start()
    assert service.join("c-1", _config(ca), _member()).connected
    monkeypatch.setenv("FAKE_MODE", "crash")  # every start from now on crashes
    os.killpg(service.status()["pid"], signal.SIGKILL)
    delays: list[float] = []
    process = AgentProcess([service], check_interval=0.05)
    process._started.append(service)  # already started above

    deadline = time.monotonic() + 60
    while not any(r["state"] == "failed" for r in device.records):
        assert time.monotonic() < deadline, device.records
        process.supervise()  # raises ServiceFailed if the policy were exceeded
        if service.last_delay is not None and service.last_delay not in delays:
            delays.append(service.last_delay)
        time.sleep(0.02)
    process.shutdown()

    [failed] = device.records
    assert failed["command_id"] == "c-1" and "gave up after 3 crashes" in failed["error"]
    assert "exited with code" in failed["error"]
    assert delays == [0.05, 0.1]  # doubling per crash
    assert service.memberships() == [] and service.status()["state"] == "failed"
    assert len(_calls(tmp_path)) == 3  # the first start and two restarts
    assert json.loads((device.state / "fl" / "joins.json").read_text())["jobs"] == []


def test_a_join_refused_by_the_superlink_is_an_error_with_its_last_words(
    device: Device, ca: Ca, fake: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_MODE", "refused")
    service = _service(device, fake)
    service.start()
    try:
        with pytest.raises(
            SupernodeError,
            match=r"exited with code 1: Flower Exit Code: 305 \| Failed to initialize .* Failed to activate SuperNode\.$",
        ):
            service.join("c-1", _config(ca), _member())
        assert service.memberships() == [] and service.healthy()
    finally:
        service.stop()


def test_leave_after_ends_the_membership_and_the_supernode(device: Device, ca: Ca, fake: Path) -> None:
    now = [time.time()]
    service = _service(device, fake, clock=lambda: now[0])
    service.start()
    outcome = service.join("c-1", _config(ca), _member(leave_after=now[0] + 60))
    assert outcome.pid is not None
    family = [outcome.pid, *processes_naming(f"127.0.0.1:{outcome.runtime_port}")]
    now[0] += 61

    assert service.healthy()

    assert device.records == [
        {
            "type": "command",
            "command_id": "c-1",
            "state": "succeeded",
            "result": {"job_id": "job-1", "left": "leave_after passed"},
        }
    ]
    assert _gone(family, outcome.runtime_port)
    assert service.status()["state"] == "idle"
    service.stop()


def test_a_join_for_another_superlink_replaces_the_running_supernode(
    device: Device, ca: Ca, fake: Path
) -> None:
    service = _service(device, fake)
    service.start()
    try:
        first = service.join("c-1", _config(ca, "a.example:1"), _member("job-1", "c-1"))
        same = service.join("c-2", _config(ca, "a.example:1"), _member("job-2", "c-2"))
        assert same.pid == first.pid and same.replaced == []
        other = service.join("c-3", _config(ca, "b.example:2"), _member("job-3", "c-3"))
        assert other.pid != first.pid
        assert sorted(m.job_id for m in other.replaced) == ["job-1", "job-2"]
        assert [m.job_id for m in service.memberships()] == ["job-3"]
        assert service.leave("job-3", "fl-leave c-4") is not None and service.status()["pid"] is None
        assert service.leave("job-3", "fl-leave c-5") is None
    finally:
        service.stop()
    assert [(r["command_id"], r["state"], r["result"]["left"]) for r in device.records] == [
        ("c-1", "succeeded", "replaced by job job-3 on b.example:2"),
        ("c-2", "succeeded", "replaced by job job-3 on b.example:2"),
        ("c-3", "succeeded", "fl-leave c-4"),
    ]


def test_a_failed_join_keeps_the_jobs_already_served_and_restarts_their_supernode(
    device: Device, ca: Ca, fake: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = _service(device, fake, policy=RestartPolicy(limit=5, window=120, delay=0.05))
    service.start()
    try:
        service.join("c-1", _config(ca), _member("job-1", "c-1"))
        os.killpg(service.status()["pid"], signal.SIGTERM)  # it ended: the next join must start one
        _wait(lambda: service.status()["pid"] is None, 10, "its exit")
        monkeypatch.setenv("FAKE_MODE", "refused")
        with pytest.raises(SupernodeError, match="Failed to activate"):
            service.join("c-2", _config(ca), _member("job-2", "c-2"))
        assert [m.job_id for m in service.memberships()] == ["job-1"]
        assert service.status()["state"] == "restarting"  # job-1's SuperNode comes back after a backoff
        monkeypatch.setenv("FAKE_MODE", "run")
        _wait(lambda: not service.healthy(), 5, "the backoff")
        service.stop()
        service.start()  # what the agent process does
        _wait(lambda: service.healthy() and service.status()["node_id"] == 4242, 20, "the restart")
    finally:
        service.stop()
    assert device.records == []  # job-1's join still runs; job-2's failure is the command's own ack


def test_without_flower_installed_a_join_says_how_to_install_it(
    device: Device, ca: Ca, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = _service(device)
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    monkeypatch.setattr(sys, "executable", "/nonexistent/bin/python")
    service.start()
    try:
        with pytest.raises(SupernodeError, match=r"pip install 'fedge\[agent,train\]'"):
            service.join("c-1", _config(ca), _member())
    finally:
        service.stop()


# ------------------------------------------------------------------ a real SuperLink (slow)
@dataclass
class Link:
    ca: Ca
    port: int
    control: Any

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def register(self, state: Path) -> int:
        from flwr.proto.control_pb2 import RegisterNodeRequest

        return int(
            self.control.RegisterNode(RegisterNodeRequest(public_key=device_public_pem(state))).node_id
        )

    def nodes(self) -> dict[int, Any]:
        from flwr.proto.control_pb2 import ListNodesRequest

        return {n.node_id: n for n in self.control.ListNodes(ListNodesRequest()).nodes_info}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def superlink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Link]:
    program = Path(sys.executable).parent / "flower-superlink"
    assert program.exists(), (
        "flower-superlink is not installed next to this interpreter (make setup installs it)"
    )
    import httpx
    from flwr.supercore.control import ControlHttpClient
    from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor

    root = tmp_path_factory.mktemp("superlink")
    ca = make_ca()
    certfile, keyfile = server_cert(ca, root)
    (root / "ca.pem").write_text(ca.pem)
    (root / "home").mkdir()
    (root / "home" / "config.toml").write_text("[superlink]\n")
    port = _free_port()
    env = {
        **os.environ,
        "FLWR_HOME": str(root / "home"),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "PATH": os.pathsep.join([str(program.parent), os.environ.get("PATH", "")]),
    }
    argv = [str(program), "--ssl-ca-certfile", str(root / "ca.pem"), "--ssl-certfile", str(certfile),
            "--ssl-keyfile", str(keyfile), "--enable-supernode-auth", "--disable-runtime-dependency-installation",
            "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    with (root / "superlink.log").open("wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    control = None
    try:
        context = ssl.create_default_context(cafile=str(root / "ca.pem"))
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, (root / "superlink.log").read_text()[-2000:]
            try:
                if (
                    httpx.get(f"https://127.0.0.1:{port}/health", verify=context, timeout=2).status_code
                    == 200
                ):
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the SuperLink did not become healthy"
            time.sleep(0.3)
        control = ControlHttpClient.from_server_address(
            server_address=f"127.0.0.1:{port}",
            insecure=False,
            root_certificates=ca.pem.encode(),
            interceptors=[RuntimeVersionHttpInterceptor(component_name="fedge-test")],
        )
        yield Link(ca, port, control)
    finally:
        if control is not None:
            control.close()
        family = group_members(proc.pid) + processes_naming(f"127.0.0.1:{port}")
        sn._signal(family, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        time.sleep(0.5)
        sn._signal(group_members(proc.pid) + processes_naming(f"127.0.0.1:{port}"), signal.SIGKILL)


def _enrolled(tmp_path: Path, link: Link, name: str) -> Device:
    state = tmp_path / name
    enroll(state, link.ca)
    return Device(state, write_data(tmp_path / f"{name}-data" / "digits.npz"), [])


@pytest.mark.slow
def test_fl_join_starts_a_real_supernode_the_superlink_lists_and_fl_leave_ends_it(
    superlink: Link, tmp_path: Path
) -> None:
    device = _enrolled(tmp_path, superlink, "device")
    node_id = superlink.register(device.state)
    service = _service(
        device, connect_timeout=90.0, grace=10.0, policy=RestartPolicy(limit=5, window=300, delay=0.1)
    )
    runner = CommandRunner(device.state, None, device.record, service.update_lock, fl=service)
    process = AgentProcess([service, runner], check_interval=0.2)
    stopper = threading.Thread(target=process.run, daemon=True)
    stopper.start()
    try:
        params = join_params(superlink.ca.pem, superlink.address, node_id=node_id)
        assert runner.submit({"command_id": "c-join", "kind": "fl-join", "params": params})
        _wait(lambda: bool(device.records), 120, "the fl-join acknowledgement")
        [ack] = device.records
        assert ack["state"] == "running", ack
        assert ack["fl"]["connected"] is True and ack["fl"]["node_id"] == node_id
        node = superlink.nodes()[node_id]
        assert node.status == "online"
        assert node.public_key == device_public_pem(device.state)

        # the SuperNode ends by itself: the agent process restarts it and it joins again as the same node
        # (SIGTERM: it deactivates itself; after a SIGKILL the SuperLink keeps the node "online" for its
        # 60 s heartbeat patience, which the default backoff of 5, 10, 20, 40 s outlasts)
        first = service.status()
        os.kill(first["pid"], signal.SIGTERM)
        _wait(lambda: service.status()["pid"] not in (None, first["pid"]), 60, "the restart")
        _wait(lambda: service.status()["node_id"] == node_id, 90, "the rejoin")
        assert "exited with code" in (service.failure() or "")
        assert superlink.nodes()[node_id].status == "online"
        running = service.status()
        family = group_members(running["pid"])

        assert runner.submit({"command_id": "c-leave", "kind": "fl-leave", "params": {"job_id": "job-1"}})
        _wait(lambda: len(device.records) == 4, 60, "the fl-leave acknowledgements")
        assert [(r["command_id"], r["state"]) for r in device.records[1:]] == [
            ("c-leave", "running"),
            ("c-join", "succeeded"),
            ("c-leave", "succeeded"),
        ]
        assert _gone([*family, running["pid"]], running["runtime_port"])
        assert service.status()["state"] == "idle"
    finally:
        process.request_stop()
        stopper.join(60)
    assert not stopper.is_alive()


@pytest.mark.slow
def test_a_device_key_the_superlink_does_not_know_is_refused(superlink: Link, tmp_path: Path) -> None:
    device = _enrolled(tmp_path, superlink, "stranger")  # enrolled, but its key was never registered
    service = _service(device, connect_timeout=90.0)
    runner = CommandRunner(device.state, None, device.record, service.update_lock, fl=service)
    service.start()
    runner.start()
    try:
        assert runner.submit(
            {
                "command_id": "c-join",
                "kind": "fl-join",
                "params": join_params(superlink.ca.pem, superlink.address),
            }
        )
        _wait(lambda: bool(device.records), 120, "the fl-join acknowledgement")
    finally:
        runner.stop()
        service.stop()
    [ack] = device.records
    assert ack["state"] == "failed"
    assert "Flower Exit Code: 305" in ack["error"] and "Failed to activate SuperNode" in ack["error"]
    assert service.memberships() == [] and service.status()["pid"] is None
    assert processes_naming(str(device.state / "fl" / "node-config.toml")) == []


ROUND_APP = {
    "pyproject.toml": """\
        [build-system]
        requires = ["hatchling"]
        build-backend = "hatchling.build"

        [project]
        name = "roundapp"
        version = "0.1.0"
        description = "one FedAvg round through the agent's SuperNode"
        license = "Apache-2.0"
        dependencies = []

        [tool.flwr.app]
        publisher = "fedge-test"

        [tool.flwr.app.components]
        serverapp = "roundapp.server:app"
        clientapp = "roundapp.client:app"
        """,
    "roundapp/__init__.py": "",
    "roundapp/client.py": """\
        from flwr.clientapp import ClientApp

        from edge_agent.learning.clientapp import make_client_app
        from edge_agent.learning.roundlock import round_lock_mod

        base = make_client_app()  # the device's ClientApp, configured by the SuperNode's --node-config
        app = ClientApp(mods=[round_lock_mod])


        @app.train()
        def train(msg, context):
            return base(msg, context)
        """,
    "roundapp/server.py": """\
        from flwr.app import ArrayRecord, ConfigRecord, Context
        from flwr.serverapp import Grid, ServerApp
        from flwr.serverapp.strategy import FedAvg

        from edge_agent.learning.models import resolve_factory

        app = ServerApp()


        @app.main()
        def main(grid: Grid, context: Context) -> None:
            strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=1, min_available_nodes=1)
            result = strategy.start(
                grid=grid,
                initial_arrays=ArrayRecord(resolve_factory("digits-mlp")(0).state_dict()),
                num_rounds=1,
                train_config=ConfigRecord({"job-id": "job-1", "local-epochs": 1, "batch-size": 8}),
                timeout=300,
            )
            assert "train_loss" in result.train_metrics_clientapp[1]
        """,
}


@pytest.mark.slow
def test_a_real_round_runs_in_a_clientapp_that_holds_the_update_lock_and_stop_leaves_nothing(
    superlink: Link, tmp_path: Path
) -> None:
    importlib.import_module("torch")
    import hashlib

    from flwr.cli.build import build_fab_from_disk
    from flwr.common.serde import fab_to_proto, run_from_proto, user_config_to_proto
    from flwr.proto.control_pb2 import ListRunsRequest, StartRunRequest
    from flwr.supercore.fab import Fab

    device = _enrolled(tmp_path, superlink, "trainer")
    superlink.register(device.state)
    service = _service(device, connect_timeout=90.0, grace=10.0)
    holders: set[str] = set()
    service.start()
    try:
        assert service.join("c-1", _config(superlink.ca, superlink.address), _member()).connected
        app_dir = tmp_path / "app"
        for name, text in ROUND_APP.items():
            (app_dir / name).parent.mkdir(parents=True, exist_ok=True)
            (app_dir / name).write_text(textwrap.dedent(text))
        fab = build_fab_from_disk(app_dir)
        fab_proto = fab_to_proto(Fab(hashlib.sha256(fab).hexdigest(), fab, {}))
        run_id = superlink.control.StartRun(
            StartRunRequest(fab=fab_proto, override_config=user_config_to_proto({}))
        ).run_id
        port = service.status()["runtime_port"]
        clientapps: set[int] = set()
        deadline = time.monotonic() + 240
        while True:
            run = superlink.control.ListRuns(ListRunsRequest(run_id=run_id)).run_dict[run_id]
            status = run_from_proto(run).status
            if status.status == "finished":
                break
            holders |= set(service.update_lock.holders())
            clientapps |= set(processes_naming(f"127.0.0.1:{port}"))
            assert service.healthy() and time.monotonic() < deadline
            time.sleep(0.1)
        assert (status.sub_status, status.details) == ("completed", "")
        assert f"fl-round train run {run_id} round 1" in holders  # the round held the agent's update lock
        assert not service.update_lock.held
        assert len(clientapps) >= 2  # flower-superexec and the round's flwr-clientapp
        pid = service.status()["pid"]
    finally:
        service.stop()
    assert _gone([pid, *clientapps], port)
