"""Nothing lost, nothing half-written: restarts keep data; crashes and disconnects leave no debris."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import func, select

from controller.client import FedgeClient
from controller.db.models import Dataset, ModelVersion
from controller.state import build_state
from tests.conftest import ADMIN_TOKEN, LiveServer, SettingsFactory
from tests.fixtures.services import free_port, wait_for


def _serve(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "FEDGE_DATA_DIR": str(data_dir), "FEDGE_ADMIN_TOKEN": ADMIN_TOKEN}
    proc = subprocess.Popen(
        [sys.executable, "-m", "controller.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return FedgeClient(url).health().status == "ok"
        except Exception:
            return False

    wait_for(up, 60, "controller process")
    return proc


def test_data_survives_a_controller_process_restart(tmp_path: Path) -> None:
    data = os.urandom(10_000)
    src = tmp_path / "digits.npz"
    src.write_bytes(data)
    port = free_port()
    proc = _serve(tmp_path / "data", port)
    try:
        with FedgeClient(f"http://127.0.0.1:{port}", ADMIN_TOKEN) as fc:
            created = fc.push_dataset(src, {"organization_id": "o", "samples_dimension": "(8,8)"})
    finally:
        proc.kill()  # no graceful shutdown: SIGKILL
        proc.wait(10)
    proc = _serve(tmp_path / "data", port)
    try:
        with FedgeClient(f"http://127.0.0.1:{port}", ADMIN_TOKEN) as fc:
            listed = fc.list_datasets()
            sha = fc.download_dataset(created.dataset_id, tmp_path / "back.npz")
    finally:
        proc.terminate()
        proc.wait(10)
    assert [d.dataset_id for d in listed.items] == [created.dataset_id]
    assert sha == created.sha256
    assert (tmp_path / "back.npz").read_bytes() == data


def test_first_start_prints_a_generated_admin_token_once(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "FEDGE_ADMIN_TOKEN"}
    env["FEDGE_DATA_DIR"] = str(tmp_path / "d")
    cmd = [sys.executable, "-m", "controller.cli", "serve", "--port", str(port)]
    outputs = []
    for _ in range(2):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: _port_open(port), 60, "controller")
        proc.terminate()
        _, err = proc.communicate(timeout=10)
        outputs.append(err)
    token_lines = [line.strip() for line in outputs[0].splitlines() if line.strip().startswith("fedge_")]
    assert len(token_lines) == 1
    assert "fedge_" not in outputs[1]
    with FedgeClient(f"http://127.0.0.1:{port}", token_lines[0]) as fc:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda: _port_open(port), 60, "controller")
            assert fc.list_datasets().total == 0
        finally:
            proc.terminate()
            proc.wait(10)


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_startup_reconciles_crashed_uploads_and_orphans(make_settings: SettingsFactory) -> None:
    settings = make_settings()
    state = build_state(settings)
    reg = state.registry
    stuck = reg.intake.begin_dataset("admin")  # a crash after the row, mid-stream
    state.store.put(stuck.bucket, stuck.object_key, io.BytesIO(b"half"))
    state.store.put(reg.buckets.models, "11111111-2222-4333-8444-555555555555", io.BytesIO(b"orphan"))
    state.close()

    recovered = build_state(settings.model_copy(update={"pending_grace_seconds": 0}))
    with recovered.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Dataset)) == 0
    assert list(recovered.store.list(reg.buckets.datasets)) == []
    assert list(recovered.store.list(reg.buckets.models)) == []
    recovered.close()


def test_reconciliation_spares_recent_uploads(make_settings: SettingsFactory) -> None:
    settings = make_settings(pending_grace_seconds=3600)
    state = build_state(settings)
    in_flight = state.registry.intake.begin_dataset("admin")  # another replica may be streaming it right now
    state.store.put(in_flight.bucket, in_flight.object_key, io.BytesIO(b"streaming"))
    state.close()
    again = build_state(settings)
    assert again.store.exists(in_flight.bucket, in_flight.object_key)
    again.close()


def test_client_disconnect_mid_upload_leaves_nothing(make_settings: SettingsFactory) -> None:
    state = build_state(make_settings())
    with LiveServer(state) as server:
        boundary = "bnd"
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="metadata"\r\n\r\n'
            + json.dumps({"organization_id": "o", "samples_dimension": "(1)"})
            + f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="dataset"; filename="x"\r\n\r\n'
        ).encode()
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(
                (
                    "POST /v1/datasets HTTP/1.1\r\nHost: x\r\n"
                    f"Authorization: Bearer {ADMIN_TOKEN}\r\n"
                    f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                    "Content-Length: 50000000\r\n\r\n"
                ).encode()
                + head
                + os.urandom(3_000_000)
            )

            def streaming_started() -> bool:
                with state.sessions() as s:
                    return (s.scalar(select(func.count()).select_from(Dataset)) or 0) > 0

            wait_for(streaming_started, 10, "upload to start")
        # socket closed without finishing the body

        def cleaned() -> bool:
            with state.sessions() as s:
                rows = s.scalar(select(func.count()).select_from(Dataset))
            objects = list(state.store.list(state.registry.buckets.datasets))
            tmp = list((settings_dir := state.settings.data_dir / "objects" / "datasets").iterdir())
            return rows == 0 and objects == [] and tmp == [] and settings_dir.exists()

        wait_for(cleaned, 15, "disconnected upload to be cleaned up")
    with state.sessions() as s:
        assert s.scalar(select(func.count()).select_from(ModelVersion)) == 0
    state.close()
    time.sleep(0)
