"""The FL job manager's run flow on a scripted engine (no Flower): invitations, reports, publish (program,
chain record, version), failures with reasons, cancel, fl-leave; and ``fedge fl run --deploy``."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from controller.app import create_app
from controller.chain.base import ChainBackend
from controller.config import ControllerSettings
from controller.federation.base import (
    FederationEngine,
    FederationOutcome,
    FederationSpec,
    FleetEndpoint,
    ReportCallback,
)
from controller.state import ControllerState, build_state
from controller.training.base import JobState
from tests.conftest import ADMIN_TOKEN
from tests.controller.federation.fl_helpers import ADMIN, enroll_direct, job_body, register_digits_model


@dataclass
class ScriptedEngine(FederationEngine):
    """Plays a run: reports each round from every participant node and writes the final parameters."""

    name = "flower"
    mode: str = "succeed"  # succeed | fail | hang | refuse-all
    registered: dict[str, int] = field(default_factory=dict)
    unregistered: list[int] = field(default_factory=list)
    specs: list[FederationSpec] = field(default_factory=list)

    @property
    def identity(self) -> str:
        return "scripted"

    def start(self) -> None:
        return None

    def fleet_endpoint(self) -> FleetEndpoint:
        return FleetEndpoint("127.0.0.1:9", "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")

    def register_node(self, device_id: str, public_key_pem: bytes) -> int:
        return self.registered.setdefault(device_id, 100 + len(self.registered))

    def unregister_node(self, node_id: int) -> None:
        self.unregistered.append(node_id)

    def run(
        self, spec: FederationSpec, cancel: threading.Event, on_round: ReportCallback
    ) -> FederationOutcome:
        self.specs.append(spec)
        if self.mode == "hang":
            cancel.wait(30)
            return FederationOutcome(JobState.CANCELLED, "cancelled", "1")
        if self.mode == "unreachable":
            from controller.federation.base import EngineUnavailable

            raise EngineUnavailable("the SuperLink at 127.0.0.1:1 did not answer (StartRun)")
        if self.mode == "fail":
            on_round({"type": "failed", "reason": "NodesUnavailable: only 1 of 2 connected"})
            return FederationOutcome(JobState.FAILED, "the Flower run failed: NodesUnavailable", "1")
        from edge_agent.learning.models import build_model

        nodes = list(spec.participant_nodes)
        delta = spec.dp_delta if spec.dp_target_epsilon > 0 else 0.0
        for rnd in range(1, spec.rounds + 1):
            refused = nodes if self.mode == "refuse-all" else []
            clients = [] if refused else [
                {"node_id": n, "metrics": {"train_loss": 1.0 / rnd, "num-examples": 10, "dp-delta": delta,
                                           "dp-epsilon": rnd * (i + 1) * 0.5 if delta else 0.0,
                                           "dp-budget-remaining": 10.0 - rnd * (i + 1) * 0.5 if delta else 0.0}}
                for i, n in enumerate(nodes)
            ]  # fmt: skip
            on_round({"type": "round", "kind": "train", "round": rnd, "metrics": {"train_loss": 1.0 / rnd},
                      "clients": clients, "budget_refused": refused, "rejected": [], "failures": 0,
                      "bytes_sent": 100, "bytes_received": 100, "seconds": 0.1})  # fmt: skip
            on_round({"type": "round", "kind": "evaluate", "round": rnd, "metrics": {"eval_accuracy": 0.5},
                      "clients": [], "budget_refused": [], "rejected": [], "failures": 0,
                      "bytes_sent": 100, "bytes_received": 0, "seconds": 0.1})  # fmt: skip
        params = {k: v.numpy() for k, v in build_model(spec.network, spec.seed).state_dict().items()}
        np.savez(spec.output_path, **params)
        summary = {"type": "finished", "final_metrics": {"eval_accuracy": 0.5}, "seconds": 1.0}
        on_round(summary)
        return FederationOutcome(JobState.SUCCEEDED, None, "1", spec.output_path, summary)


@dataclass
class Ctl:
    state: ControllerState
    client: TestClient
    engine: ScriptedEngine
    model_id: str
    devices: list[str]

    def run(self, **extra: Any) -> dict[str, Any]:
        r = self.client.post(
            "/v1/fl/jobs", headers=ADMIN, json=job_body(self.model_id, self.devices, **extra)
        )
        assert r.status_code == 202, r.text
        return self.wait(r.json()["job_id"])

    def wait(self, job_id: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job: dict[str, Any] = self.client.get(f"/v1/fl/jobs/{job_id}", headers=ADMIN).json()
            if job["status"] in ("succeeded", "failed", "cancelled"):
                return job
            time.sleep(0.1)
        raise AssertionError(f"job {job_id} did not end")


@pytest.fixture
def ctl(tmp_path: Path, shared_evm: ChainBackend) -> Iterator[Ctl]:
    settings = ControllerSettings(data_dir=tmp_path / "data", admin_token=ADMIN_TOKEN, _env_file=None)
    engine = ScriptedEngine()
    state = build_state(settings, shared_evm, start_jobs=False)
    state.federation._engine_factory = lambda: engine
    state.federation.start()
    with TestClient(create_app(state)) as client:
        _, model_id = register_digits_model(client)
        devices = [enroll_direct(state), enroll_direct(state)]
        yield Ctl(state, client, engine, model_id, devices)
    state.close()


def test_a_job_is_invited_run_and_published_as_a_version_with_a_chain_record(ctl: Ctl) -> None:
    job = ctl.run(privacy={"dp": {"epsilon": 3.0}})
    assert job["status"] == "succeeded", job["error"]
    (spec,) = ctl.engine.specs
    assert sorted(spec.participant_nodes) == sorted(ctl.engine.registered.values())
    assert spec.dp_target_epsilon == 3.0 and spec.report_url.endswith(f"/v1/fl/jobs/{job['job_id']}/reports")
    assert spec.strategy == {"name": "fedavg"} and spec.min_clients == 2 and spec.network == "digits-linear"
    assert job["rounds_completed"] == 2 and len(job["metrics"]) == 2
    assert (
        job["epsilon_spent"] == 2.0 and job["chain"]["dp_epsilon"] == 2.0 and job["chain"]["dp_delta"] == 1e-5
    )
    assert job["result"]["version"] == 1 and job["chain"]["final_model_hash"] == job["result"]["sha256"]
    assert job["chain"]["strategy"] == "flower:fedavg" and len(job["chain"]["participant_hashes"]) == 2
    version = ctl.client.get(f"/v1/models/{ctl.model_id}/versions", headers=ADMIN).json()[0]
    assert version["kind"] == "trained" and version["filename"] == "model.pt2"
    meta = ctl.client.get(f"/v1/models/{ctl.model_id}/metadata", headers=ADMIN).json()
    assert meta["status"] == "trained"
    for device in ctl.devices:  # invited with fl-join, dismissed with fl-leave
        kinds = [c.kind for c in ctl.state.commands.pending(device)]
        assert kinds == ["fl-join", "fl-leave"]
    # the token the ServerApp reported with is revoked once the job ended
    with ctl.state.sessions() as s:
        from controller.db.models import ApiToken, FlJob

        row = s.get(FlJob, job["job_id"])
        assert row is not None and s.get(ApiToken, row.token_id).revoked_at is not None  # type: ignore[union-attr]
    # a next job starts from this result (its weights read from the program, nothing unpickled)
    second = ctl.run(model={"model_id": ctl.model_id, "version": 1})
    assert second["status"] == "succeeded" and second["start_version"] == 1
    assert second["network"] == "digits-linear"  # taken from the start version's descriptor
    assert ctl.engine.specs[-1].initial_path is not None and second["result"]["version"] == 2


def test_a_failed_run_fails_the_job_with_the_engines_reason(ctl: Ctl) -> None:
    ctl.engine.mode = "fail"
    job = ctl.run()
    assert job["status"] == "failed" and "NodesUnavailable" in job["error"]
    assert job["summary"]["server_failure"].startswith("NodesUnavailable") and job["result"] is None


def test_an_engine_that_cannot_start_the_run_fails_the_job_with_its_reason(ctl: Ctl) -> None:
    ctl.engine.mode = "unreachable"
    job = ctl.run()
    assert job["status"] == "failed"
    assert job["error"] == "the flower engine failed: the SuperLink at 127.0.0.1:1 did not answer (StartRun)"
    for device in ctl.devices:  # invited, then dismissed
        assert [c.kind for c in ctl.state.commands.pending(device)] == ["fl-join", "fl-leave"]


def test_a_job_where_every_device_refuses_for_its_budget_fails_without_a_version(ctl: Ctl) -> None:
    ctl.engine.mode = "refuse-all"
    job = ctl.run()
    assert (
        job["status"] == "failed"
        and "no device contributed a train update (4 budget refusal(s))" in job["error"]
    )
    assert {p["state"] for p in job["participants"]} == {"excluded"}
    assert ctl.client.get(f"/v1/models/{ctl.model_id}/versions", headers=ADMIN).json() == []


def test_a_running_job_is_cancelled(ctl: Ctl) -> None:
    ctl.engine.mode = "hang"
    r = ctl.client.post("/v1/fl/jobs", headers=ADMIN, json=job_body(ctl.model_id, ctl.devices))
    job_id = r.json()["job_id"]
    deadline = time.monotonic() + 20
    while not ctl.engine.specs and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ctl.client.post(f"/v1/fl/jobs/{job_id}/cancel", headers=ADMIN).status_code == 202
    job = ctl.wait(job_id)
    assert job["status"] == "cancelled" and job["error"] == "cancelled"


def test_revoking_a_device_unregisters_its_node(ctl: Ctl) -> None:
    assert ctl.run()["status"] == "succeeded"
    node = ctl.engine.registered[ctl.devices[0]]
    assert ctl.client.delete(f"/v1/devices/{ctl.devices[0]}", headers=ADMIN).status_code == 204
    assert ctl.engine.unregistered == [node]
    ctl.state.federation.ready_engine()  # nothing left to unregister at the next start
    assert ctl.engine.unregistered == [node]


# ---------------------------------------------------------------- fedge fl run --deploy


class FakeClient:
    """Records what ``fedge fl run --deploy`` asks of the SDK."""

    calls: list[tuple[str, Any]] = []

    def __init__(self, *_: Any, **__: Any) -> None:
        pass

    def close(self) -> None:
        pass

    def fl_run(self, body: Mapping[str, Any]) -> Any:
        from controller.schemas.fl import FlJobCreated

        self.calls.append(("fl_run", dict(body)))
        return FlJobCreated(job_id="j1", status="queued", participants=["d1", "d2"], min_clients=2)

    def wait_fl_job(self, job_id: str, **_: Any) -> Any:
        from controller.schemas.fl import FlJobOut

        self.calls.append(("wait_fl_job", job_id))
        return FlJobOut.model_validate(FAKE_JOB)

    def translate(self, model_id: str, *, source_version: int | None = None, quantize: bool = False) -> Any:
        from controller.schemas.translation import TranslateResult

        self.calls.append(("translate", (model_id, source_version)))
        return TranslateResult(model_id=model_id, version=4, sha256="b" * 64, source_version=3, framework="pytorch",
                               opset=18, max_abs_diff=1e-6, tolerance=1e-4, n_samples=10, source_accuracy=0.9,
                               onnx_accuracy=0.9, quantized=None)  # fmt: skip

    def deploy(self, model_id: str, version: int | None = None, **kw: Any) -> Any:
        from controller.schemas.deployments import DeploymentCreated

        self.calls.append(("deploy", (model_id, version, kw)))
        return DeploymentCreated(deployment_id="dep-1")

    def wait_deployment(self, deployment_id: str, **_: Any) -> Any:
        from controller.schemas.deployments import DeploymentOut

        return DeploymentOut(id=deployment_id, model_id="m1", version=4, state="succeeded", strategy={},
                             selector=None, max_failure_ratio=0, auto_rollback=True, current_wave=1, error=None,
                             created_at="2026-01-01T00:00:00Z", finished_at=None, devices=[])  # fmt: skip


FAKE_JOB: dict[str, Any] = {
    "job_id": "j1", "status": "succeeded", "engine": "flower", "model_id": "m1", "start_version": None,
    "network": "digits-mlp", "rounds": 2, "rounds_completed": 2, "min_clients": 2, "strategy": {"name": "fedavg"},
    "privacy": {}, "spec": {}, "run_id": "1", "metrics": [], "epsilon_spent": None, "delta": None,
    "participants": [
        {"device_id": d, "state": s, "node_id": "1", "command_id": None, "rounds_trained": 2, "budget_refusals": 0,
         "rejections": 0, "epsilon": None, "epsilon_before": None, "budget_remaining": None, "delta": None}
        for d, s in (("d1", "trained"), ("d2", "trained"), ("d3", "revoked"))
    ],
    "result": {"model_id": "m1", "version": 3, "sha256": "a" * 64}, "chain": None, "summary": {}, "error": None,
    "created_by": "admin", "created_at": "2026-01-01T00:00:00Z", "started_at": None, "finished_at": None,
}  # fmt: skip


def test_fl_run_deploy_translates_the_result_and_rolls_it_out_in_canary_waves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from typer.testing import CliRunner

    import controller.user_cli as cli

    FakeClient.calls = []
    monkeypatch.setattr(cli, "FedgeClient", FakeClient)
    result = CliRunner().invoke(
        cli.app,
        ["fl", "run", "--model", "m1", "--device", "d1", "--device", "d2", "--rounds", "2", "--strategy", "fedprox",
         "--param", "mu=0.01", "--dp-epsilon", "2", "--deploy", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    calls = dict(FakeClient.calls)
    body = calls["fl_run"]
    assert body["participants"] == {"device_ids": ["d1", "d2"], "selector": None}
    assert body["strategy"] == {"name": "fedprox", "params": {"mu": 0.01}}
    assert body["privacy"]["dp"]["epsilon"] == 2.0 and body["rounds"] == 2
    assert calls["translate"] == ("m1", 3)
    model_id, version, kw = calls["deploy"]
    assert (model_id, version) == ("m1", 4) and kw["device_ids"] == ["d1", "d2"]  # not the revoked one
    assert kw["waves"] == [0.1, 1.0] and kw["auto_rollback"] is True
