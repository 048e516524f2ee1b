"""Real NVIDIA FLARE jobs through ``/v1/fl/jobs``: FLARE's simulator (server + one client per
participant device, on loopback, in a child process tree of the controller) runs the job; its
per-round metrics become the job's rounds, its final global model the model's next version with a
chain record; cancel stops the whole process tree."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from controller.app import create_app
from controller.chain.base import ChainBackend
from controller.config import ControllerSettings
from controller.federation.nvflare import node_id
from controller.state import ControllerState, build_state
from tests.conftest import ADMIN_TOKEN
from tests.controller.federation.fl_helpers import ADMIN, enroll_direct, job_body, register_digits_model

pytestmark = pytest.mark.slow


@dataclass
class Ctl:
    state: ControllerState
    client: TestClient
    model_id: str
    devices: list[str]
    data_dir: Path

    def submit(self, **extra: Any) -> str:
        body = job_body(self.model_id, self.devices, engine="nvflare", **extra)
        r = self.client.post("/v1/fl/jobs", headers=ADMIN, json=body)
        assert r.status_code == 202, r.text
        return str(r.json()["job_id"])

    def get(self, job_id: str) -> dict[str, Any]:
        job: dict[str, Any] = self.client.get(f"/v1/fl/jobs/{job_id}", headers=ADMIN).json()
        return job

    def wait(self, job_id: str, timeout: float = 240) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.get(job_id)
            if job["status"] in ("succeeded", "failed", "cancelled"):
                return job
            time.sleep(0.5)
        raise AssertionError(f"job {job_id} did not end")


@pytest.fixture
def ctl(tmp_path: Path, shared_evm: ChainBackend, monkeypatch: pytest.MonkeyPatch) -> Iterator[Ctl]:
    from fedge_common.quiet import QUIET_ENV

    for key, value in QUIET_ENV.items():
        monkeypatch.setenv(key, value)
    data_dir = tmp_path / "data"
    settings = ControllerSettings(data_dir=data_dir, admin_token=ADMIN_TOKEN, _env_file=None)
    state = build_state(settings, shared_evm, start_jobs=False)
    state.federation.start()
    with TestClient(create_app(state)) as client:
        _, model_id = register_digits_model(client)
        devices = [enroll_direct(state), enroll_direct(state)]
        yield Ctl(state, client, model_id, devices, data_dir)
    state.close()


def _flare_processes(root: Path) -> list[str]:
    """Command lines of live processes that belong to a FLARE run under ``root``."""
    import psutil  # type: ignore[import-untyped]

    found = []
    for p in psutil.process_iter(["cmdline"]):
        line = " ".join(p.info["cmdline"] or [])
        if str(root) in line:
            found.append(line)
    return found


@pytest.mark.heavy  # over 20 s on 2 cores: make test-heavy (CI runs it)
def test_a_two_client_nvflare_job_runs_to_a_registered_model_with_a_chain_record(ctl: Ctl) -> None:
    job_id = ctl.submit(rounds=1, lr=0.5)
    job = ctl.wait(job_id)
    assert job["status"] == "succeeded", job["error"]
    assert job["engine"] == "nvflare" and job["rounds_completed"] == 1
    (train,) = [r for r in job["metrics"] if r["train_loss"] is not None]
    assert train["round"] == 1 and sorted(train["participants"]) == sorted(ctl.devices)
    assert train["eval_accuracy"] is not None and 0.0 <= train["eval_accuracy"] <= 1.0
    assert train["bytes_out"] > 0 and train["bytes_in"] > 0
    parts = {p["device_id"]: p for p in job["participants"]}
    assert all(
        parts[d]["rounds_trained"] == 1 and parts[d]["node_id"] == str(node_id(d)) for d in ctl.devices
    )
    # the result went through the same publish path as a Flower result
    assert job["result"]["version"] == 1 and job["chain"]["final_model_hash"] == job["result"]["sha256"]
    assert job["chain"]["strategy"] == "nvflare:fedavg" and len(job["chain"]["participant_hashes"]) == 2
    version = ctl.client.get(f"/v1/models/{ctl.model_id}/versions", headers=ADMIN).json()[0]
    assert version["kind"] == "trained" and version["filename"] == "model.pt2"
    assert job["summary"]["final_metrics"]["eval_accuracy"] == train["eval_accuracy"]
    # the devices ran nothing: no fl-join, no fl-leave
    for device in ctl.devices:
        assert ctl.state.commands.pending(device) == []
    # FLARE's cells were on loopback only, and nothing of the run is left running
    root = ctl.data_dir / "fl-jobs" / job_id / "nvflare"
    logs = "\n".join(p.read_text(errors="replace") for p in root.rglob("log.txt"))
    hosts = set(re.findall(r"tcp://([^:/\s'\"]+):\d+", logs))
    assert hosts and hosts <= {"localhost", "127.0.0.1"}, hosts
    assert _flare_processes(root) == []

    # the next job starts from that result (FLARE's persistor loads the start parameters)
    second = ctl.wait(ctl.submit(rounds=1, lr=0.5, model={"model_id": ctl.model_id, "version": 1}))
    assert second["status"] == "succeeded", second["error"]
    assert second["start_version"] == 1 and second["result"]["version"] == 2
    # its clients scored the start model before training: the first job's final model, on the same split
    assert second["summary"]["initial_metrics"]["eval_accuracy"] == pytest.approx(
        job["summary"]["final_metrics"]["eval_accuracy"]
    )


@pytest.mark.heavy
def test_a_running_nvflare_job_is_cancelled_and_its_processes_stopped(ctl: Ctl) -> None:
    job_id = ctl.submit(rounds=200)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not ctl.get(job_id)["metrics"]:
        time.sleep(0.5)  # a round report arrived while the job runs
    assert ctl.get(job_id)["status"] == "running"
    r = ctl.client.post(f"/v1/fl/jobs/{job_id}/cancel", headers=ADMIN)
    assert r.status_code in (200, 202), r.text
    job = ctl.wait(job_id, timeout=60)
    assert job["status"] == "cancelled" and job["result"] is None and job["chain"] is None
    assert job["metrics"] and job["rounds_completed"] < 200 and "cancelled" in (job["error"] or "")
    assert _flare_processes(ctl.data_dir / "fl-jobs" / job_id / "nvflare") == []


def test_the_job_api_refuses_what_nvflare_does_not_run_and_names_a_missing_extra(
    ctl: Ctl, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    from tests.controller.federation.fl_helpers import problem

    def post(**extra: Any) -> Any:
        body = job_body(ctl.model_id, ctl.devices, engine="nvflare", **extra)
        return problem(ctl.client.post("/v1/fl/jobs", headers=ADMIN, json=body))

    p = post(privacy={"dp": {"epsilon": 3.0}})
    assert p.status == 422 and p.field == "privacy.dp" and "local DP-SGD" in p.detail
    p = post(strategy={"name": "fedavg", "params": {"x": 1}})
    assert p.status == 422 and p.field == "strategy.params"
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "nvflare" else real(name, *a)
    )
    p = post()
    assert p.status == 422 and p.field == "engine" and "pip install 'fedge[flare]'" in p.detail
    assert ctl.client.get("/v1/fl/jobs", headers=ADMIN).json()["total"] == 0  # nothing was queued


@pytest.mark.heavy
def test_the_flare_child_ends_when_the_controller_that_started_it_dies(tmp_path: Path) -> None:
    """The child runs in its own session (cancel stops its tree): a controller killed with SIGKILL must not
    leave FLARE running."""
    import os
    import signal
    import subprocess
    import sys

    import numpy as np
    import psutil

    from controller.federation.nvflare import JobPlan
    from tests.controller.federation.fl_helpers import digits

    x, y = digits(200)
    np.savez(tmp_path / "ds.npz", x=x, y=y)
    plan = JobPlan(job_id="orphan", sites=["a", "b"], network="digits-linear", rounds=1000, min_clients=2,
                   dataset=str(tmp_path / "ds.npz"), root=str(tmp_path / "nvflare"))  # fmt: skip
    (tmp_path / "nvflare").mkdir()
    plan.dump(tmp_path / "nvflare" / "plan.json")
    starter = (
        "import subprocess, sys, time\n"
        "p = subprocess.Popen([sys.executable, '-m', 'controller.federation.nvflare', sys.argv[1]],"
        " start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    controller = subprocess.Popen(
        [sys.executable, "-c", starter, str(tmp_path / "nvflare" / "plan.json")],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[3],
    )
    assert controller.stdout is not None
    child = psutil.Process(int(controller.stdout.readline()))
    tree: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 60
        while len(tree) < 3 and time.monotonic() < deadline:  # FLARE's server and both client workers
            with contextlib.suppress(psutil.Error):
                tree = child.children(recursive=True)
            time.sleep(0.2)
        os.kill(controller.pid, signal.SIGKILL)
        controller.wait(10)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if not child.is_running() or child.status() == psutil.STATUS_ZOMBIE:
                break
            time.sleep(0.2)
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
        _, alive = psutil.wait_procs(tree, timeout=30)  # and FLARE's tree with it (own sessions)
        assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], alive
    finally:
        for p in tree:
            with contextlib.suppress(psutil.Error):
                p.kill()
        with contextlib.suppress(psutil.Error):
            for p in [*child.children(recursive=True), child]:
                p.kill()
