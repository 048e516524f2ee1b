"""The FL jobs API without a federation runtime: validation (precise 422s), roles, queue and cancel,
the ServerApp's round reports (metrics, stragglers, budget refusals, the privacy mirror) and the budget
pre-check, restart recovery, the fl-join command, the FAB's run config and the migration."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from controller.app import create_app
from controller.chain.base import ChainBackend
from controller.config import ControllerSettings
from controller.db.models import DevicePrivacy, FlJob, FlParticipant, utcnow
from controller.security import tokens
from controller.security.principal import Role
from controller.state import ControllerState, build_state
from tests.conftest import ADMIN_TOKEN
from tests.controller.federation.fl_helpers import (
    ADMIN,
    enroll_direct,
    job_body,
    problem,
    register_digits_model,
)


@dataclass
class Ctl:
    state: ControllerState
    client: TestClient
    model_id: str
    devices: list[str]

    def token(self, role: str, **extra: Any) -> dict[str, str]:
        body: dict[str, Any] = {"name": f"t-{role}", "role": role, **extra}
        r = self.client.post("/v1/tokens", headers=ADMIN, json=body)
        assert r.status_code == 201, r.text
        return {"Authorization": f"Bearer {r.json()['token']}"}

    def submit(self, **extra: Any) -> Any:
        return self.client.post(
            "/v1/fl/jobs", headers=ADMIN, json=job_body(self.model_id, self.devices, **extra)
        )


@pytest.fixture
def ctl(tmp_path: Path, shared_evm: ChainBackend) -> Iterator[Ctl]:
    """A controller that only queues FL jobs (no workers, no SuperLink), two enrolled devices."""
    settings = ControllerSettings(data_dir=tmp_path / "data", admin_token=ADMIN_TOKEN, _env_file=None)
    state = build_state(settings, shared_evm, start_jobs=False)
    with TestClient(create_app(state)) as client:
        _, model_id = register_digits_model(client)
        devices = [enroll_direct(state, site="lab"), enroll_direct(state, site="lab")]
        yield Ctl(state, client, model_id, devices)
    state.close()


# ---------------------------------------------------------------- create, read, list, cancel


def test_a_valid_job_is_queued_with_its_participants_and_listed(ctl: Ctl) -> None:
    r = ctl.submit(min_clients=2, strategy={"name": "fedprox", "params": {"mu": 0.01}})
    assert r.status_code == 202, r.text
    created = r.json()
    assert created["status"] == "queued" and sorted(created["participants"]) == sorted(ctl.devices)
    job = ctl.client.get(f"/v1/fl/jobs/{created['job_id']}", headers=ADMIN).json()
    assert job["status"] == "queued" and job["engine"] == "flower" and job["network"] == "digits-linear"
    assert job["strategy"] == {"name": "fedprox", "proximal_mu": 0.01}
    assert job["spec"]["data"] == {"dataset": "digits", "input_shape": [None, 1, 8, 8], "num_classes": None}
    assert {p["state"] for p in job["participants"]} == {"selected"} and job["metrics"] == []
    page = ctl.client.get("/v1/fl/jobs?limit=1&offset=0", headers=ADMIN).json()
    assert page["total"] == 1 and page["items"][0]["job_id"] == created["job_id"]
    assert ctl.client.get("/v1/fl/jobs?status=running", headers=ADMIN).json()["total"] == 0


def test_a_label_selector_and_min_fraction_choose_the_devices(ctl: Ctl) -> None:
    body = job_body(ctl.model_id, [], participants={"selector": {"site": "lab"}}, min_fraction=1.0)
    r = ctl.client.post("/v1/fl/jobs", headers=ADMIN, json=body)
    assert r.status_code == 202, r.text
    assert r.json()["min_clients"] == 2 and sorted(r.json()["participants"]) == sorted(ctl.devices)


def test_a_queued_job_is_cancelled_at_once_and_cannot_be_cancelled_twice(ctl: Ctl) -> None:
    job_id = ctl.submit().json()["job_id"]
    r = ctl.client.post(f"/v1/fl/jobs/{job_id}/cancel", headers=ADMIN)
    assert r.status_code == 202 and r.json()["status"] == "cancelled"
    again = ctl.client.post(f"/v1/fl/jobs/{job_id}/cancel", headers=ADMIN)
    assert again.status_code == 409
    assert ctl.client.get("/v1/fl/jobs/nope", headers=ADMIN).status_code == 404


def test_developers_may_run_jobs_job_tokens_may_not(ctl: Ctl) -> None:
    body = job_body(ctl.model_id, ctl.devices)
    assert ctl.client.post("/v1/fl/jobs", headers=ctl.token("developer"), json=body).status_code == 202
    job_token = ctl.token("job", model_id=ctl.model_id)
    assert ctl.client.post("/v1/fl/jobs", headers=job_token, json=body).status_code == 403
    assert ctl.client.get("/v1/fl/jobs", headers=job_token).status_code == 403
    assert ctl.client.get("/v1/fl/jobs").status_code == 401


# ---------------------------------------------------------------- precise 422s


@pytest.mark.parametrize(
    ("extra", "field", "words"),
    [
        (
            {"privacy": {"dp": {"epsilon": 0}}},
            "body.privacy.dp.epsilon",
            "epsilon must be a finite number > 0",
        ),
        ({"privacy": {"dp": {"epsilon": -1.5}}}, "body.privacy.dp.epsilon", "> 0, got -1.5"),
        ({"privacy": {"dp": {"epsilon": 1, "delta": 1}}}, "body.privacy.dp.delta", "delta must be in (0, 1)"),
        ({"min_clients": 3}, "min_clients", "needs 3 devices per round but only 2 eligible"),
        (
            {"strategy": {"name": "fedavg", "params": {"proximal_mu": 0.1}}},
            "strategy",
            "unknown parameter 'proximal_mu'",
        ),
        (
            {"strategy": {"name": "fedtrimmedavg", "params": {"bta": 0.1}}},
            "strategy",
            "unknown parameter 'bta'",
        ),
        ({"strategy": {"name": "fedsgd"}}, "strategy", "unknown strategy 'fedsgd'"),
        ({"strategy": {"name": "krum", "params": {"num_malicious_nodes": 0.5}}}, "strategy", "whole number"),
        ({"engine": "nvflare", "strategy": {"name": "krum"}}, "strategy.name", "only the fedavg strategy"),
        ({"model": {"model_id": "x" * 36, "network": "digits-linear"}}, None, "not found"),
        ({"rounds": 0}, "body.rounds", "greater than or equal to 1"),
        (
            {"privacy": {"central_dp": {"noise_multiplier": 1.0}}},
            "privacy.central_dp",
            "missing clipping_norm",
        ),
        ({"unexpected": 1}, "body.unexpected", "Extra inputs are not permitted"),
    ],
)
def test_a_bad_job_is_refused_with_a_precise_422(
    ctl: Ctl, extra: dict[str, Any], field: str | None, words: str
) -> None:
    r = ctl.submit(**extra)
    p = problem(r)
    if field is None:
        assert p.status == 404 and words in p.detail
        return
    assert p.status == 422, p.body
    assert p.field == field and words in p.detail, p.body


def test_the_network_is_required_and_must_be_one_the_devices_know(ctl: Ctl) -> None:
    r = ctl.client.post("/v1/fl/jobs", headers=ADMIN,
                        json={**job_body(ctl.model_id, ctl.devices), "model": {"model_id": ctl.model_id}})  # fmt: skip
    p = problem(r)
    assert p.status == 422 and p.field == "model.network" and "name the network" in p.detail
    p = problem(ctl.submit(model={"model_id": ctl.model_id, "network": "resnet-9000"}))
    assert p.status == 422 and p.field == "model.network" and "unknown network 'resnet-9000'" in p.detail


def test_unknown_and_revoked_devices_are_refused(ctl: Ctl) -> None:
    p = problem(ctl.client.post("/v1/fl/jobs", headers=ADMIN, json=job_body(ctl.model_id, ["0" * 36])))
    assert p.status == 422 and p.field == "participants.device_ids" and "not enrolled" in p.detail
    ctl.state.fleet.revoke(ctl.devices[1])
    p = problem(ctl.submit())
    assert p.status == 422 and p.field == "participants.device_ids" and "revoked" in p.detail
    p = problem(ctl.client.post("/v1/fl/jobs", headers=ADMIN,
                                json=job_body(ctl.model_id, [], participants={"selector": {"site": "mars"}})))  # fmt: skip
    assert p.status == 422 and p.field == "participants" and "no active device" in p.detail


def test_a_job_whose_planned_epsilon_exceeds_a_participants_remaining_budget_is_refused(ctl: Ctl) -> None:
    with ctl.state.sessions.begin() as s:
        s.add(DevicePrivacy(device_id=ctl.devices[0], dataset="digits", epsilon_spent=7.5, budget_remaining=0.5,
                            delta=1e-5, rounds=3, refusals=0))  # fmt: skip
    p = problem(ctl.submit(privacy={"dp": {"epsilon": 1.0}}))
    assert p.status == 422 and p.field == "privacy.dp.epsilon"
    assert f"device {ctl.devices[0]} has epsilon 0.5 left on dataset 'digits'" in p.detail
    assert p.body["devices"] == [ctl.devices[0]]
    assert ctl.submit(privacy={"dp": {"epsilon": 0.4}}).status_code == 202  # fits
    assert ctl.submit(privacy={"dp": {"epsilon": 1.0}}, data={"dataset": "other"}).status_code == 202


# ---------------------------------------------------------------- reports and the mirror


def _running(ctl: Ctl, job_id: str) -> dict[str, str]:
    """Put a queued job in the state the worker leaves it in: running, devices invited with node ids,
    a report token. Returns the token's header."""
    with ctl.state.sessions.begin() as s:
        job = s.get(FlJob, job_id)
        assert job is not None
        job.state, job.started_at = "running", utcnow()
        for n, part in enumerate(sorted(job_parts(s, job_id), key=lambda p: ctl.devices.index(p.device_id))):
            part.state, part.node_id, part.command_id = "invited", str(1000 + n), None
        plaintext, row = tokens.mint(s, name="r", role=Role.JOB, subject=f"fl-job:{job_id}", ttl_seconds=600)
        job.token_id = row.id
    return {"Authorization": f"Bearer {plaintext}"}


def job_parts(s: Any, job_id: str) -> list[FlParticipant]:
    from sqlalchemy import select

    return list(s.scalars(select(FlParticipant).where(FlParticipant.job_id == job_id)))


def _train(
    round_: int, clients: list[tuple[int, float]], refused: tuple[int, ...] = (), **extra: Any
) -> dict[str, Any]:
    return {
        "type": "round", "run_id": 7, "job_id": "x", "kind": "train", "round": round_,
        "metrics": {"train_loss": 0.9 / round_, "train_accuracy": 0.5 + 0.1 * round_, "num-examples": 100},
        "participants": len(clients), "failures": 0, "budget_refused": list(refused), "rejected": [],
        "bytes_sent": 2600 * 2, "bytes_received": 2600 * len(clients), "seconds": 1.5,
        "clients": [{"node_id": n, "metrics": {"train_loss": 0.5, "num-examples": 50, "dp-epsilon": eps,
                                               "dp-delta": 1e-5, "dp-budget-remaining": 10 - eps}}
                    for n, eps in clients],
        **extra,
    }  # fmt: skip


def _evaluate(round_: int, nodes: list[int]) -> dict[str, Any]:
    return {
        "type": "round", "run_id": 7, "job_id": "x", "kind": "evaluate", "round": round_,
        "metrics": {"eval_loss": 0.7 / round_, "eval_accuracy": 0.6 + 0.1 * round_, "num-examples": 400},
        "participants": len(nodes), "failures": 0, "budget_refused": [], "rejected": [],
        "bytes_sent": 2600 * 2, "bytes_received": 0, "seconds": 0.5,
        "clients": [{"node_id": n, "metrics": {"eval_loss": 0.7, "eval_accuracy": 0.7, "num-examples": 200}}
                    for n in nodes],
    }  # fmt: skip


def test_round_reports_become_per_round_metrics_and_the_privacy_mirror(ctl: Ctl) -> None:
    job_id = ctl.submit(privacy={"dp": {"epsilon": 4.0}}).json()["job_id"]
    auth = _running(ctl, job_id)
    a, b = ctl.devices
    url = f"/v1/fl/jobs/{job_id}/reports"
    for report in (_train(1, [(1000, 1.25), (1001, 1.5)]), _evaluate(1, [1000, 1001]),
                   _train(2, [(1000, 2.5)], refused=(1001,)), _evaluate(2, [1000, 1001])):  # fmt: skip
        r = ctl.client.post(url, headers=auth, json=report)
        assert r.status_code == 204, r.text
    job = ctl.client.get(f"/v1/fl/jobs/{job_id}", headers=ADMIN).json()
    assert job["rounds_completed"] == 2 and [m["round"] for m in job["metrics"]] == [1, 2]
    one, two = job["metrics"]
    assert one["train_loss"] == pytest.approx(0.9) and one["eval_accuracy"] == pytest.approx(0.7)
    assert sorted(one["participants"]) == sorted([a, b]) and one["stragglers"] == []
    assert one["bytes_out"] == 2600 * 4 and one["bytes_in"] == 2600 * 2
    assert one["epsilon"] == {a: 1.25, b: 1.5}
    assert two["participants"] == [a] and two["budget_refused"] == [b] and two["stragglers"] == []
    parts = {p["device_id"]: p for p in job["participants"]}
    assert parts[a]["state"] == "trained" and parts[a]["rounds_trained"] == 2 and parts[a]["epsilon"] == 2.5
    assert parts[b]["state"] == "excluded" and parts[b]["budget_refusals"] == 1 and parts[b]["epsilon"] == 1.5
    assert job["epsilon_spent"] == 2.5 and job["delta"] == 1e-5
    mirror = ctl.client.get(f"/v1/devices/{b}/privacy", headers=ADMIN).json()
    assert mirror["datasets"][0] | {"updated_at": None} == {
        "dataset": "digits", "epsilon_spent": 1.5, "budget_remaining": 8.5, "delta": 1e-5, "rounds": 1,
        "refusals": 1, "last_job_id": job_id, "updated_at": None,
    }  # fmt: skip
    assert mirror["jobs"][0]["job_id"] == job_id and mirror["jobs"][0]["budget_refusals"] == 1
    # the mirror now refuses a job the device cannot afford (8.5 left)
    p = problem(ctl.submit(privacy={"dp": {"epsilon": 9.0}}))
    assert p.status == 422 and p.field == "privacy.dp.epsilon" and b in p.body["devices"]


def test_a_device_that_does_not_answer_is_a_straggler(ctl: Ctl) -> None:
    job_id = ctl.submit().json()["job_id"]
    auth = _running(ctl, job_id)
    r = ctl.client.post(f"/v1/fl/jobs/{job_id}/reports", headers=auth, json=_train(1, [(1000, 0.0)]))
    assert r.status_code == 204
    (one,) = ctl.client.get(f"/v1/fl/jobs/{job_id}", headers=ADMIN).json()["metrics"]
    assert one["participants"] == [ctl.devices[0]] and one["stragglers"] == [ctl.devices[1]]
    assert one["epsilon"] == {ctl.devices[0]: 0.0}


def test_reports_need_the_jobs_own_token_and_a_running_job(ctl: Ctl) -> None:
    job_id = ctl.submit().json()["job_id"]
    other = ctl.submit().json()["job_id"]
    url = f"/v1/fl/jobs/{job_id}/reports"
    assert ctl.client.post(url, headers=ADMIN, json=_train(1, [])).status_code == 403
    auth = _running(ctl, other)
    r = ctl.client.post(url, headers=auth, json=_train(1, []))
    assert r.status_code == 403 and "own credential" in r.json()["detail"]
    own = _running(ctl, job_id)
    assert ctl.client.post(url, headers=own, json={"type": "bogus"}).status_code == 422
    ctl.client.post(f"/v1/fl/jobs/{job_id}/cancel", headers=ADMIN)
    with ctl.state.sessions.begin() as s:
        s.get(FlJob, job_id).state = "cancelled"  # type: ignore[union-attr]
    assert ctl.client.post(url, headers=own, json=_train(1, [])).status_code == 409


def test_a_job_left_running_by_a_stopped_controller_is_failed_with_the_reason(ctl: Ctl) -> None:
    job_id = ctl.submit().json()["job_id"]
    _running(ctl, job_id)
    with ctl.state.sessions.begin() as s:
        s.get(FlJob, job_id).run_id = "42"  # type: ignore[union-attr]
    assert ctl.state.federation.recover() == 1
    job = ctl.client.get(f"/v1/fl/jobs/{job_id}", headers=ADMIN).json()
    assert job["status"] == "failed" and job["finished_at"] is not None
    assert "the controller stopped while the FL job was running (Flower run 42)" in job["error"]


def test_a_job_another_live_replica_runs_is_spared_and_a_quiet_ones_is_failed(ctl: Ctl) -> None:
    import datetime as dt

    from controller.federation.base import JobState

    fed = ctl.state.federation
    live, quiet = ctl.submit().json()["job_id"], ctl.submit().json()["job_id"]
    for job_id in (live, quiet):
        _running(ctl, job_id)
    with ctl.state.sessions.begin() as s:
        for job_id, age in ((live, 1), (quiet, fed.claims.stale_seconds + 5)):
            job = s.get(FlJob, job_id)
            assert job is not None
            job.claimed_by, job.heartbeat_at = "other-replica:1:abc", utcnow() - dt.timedelta(seconds=age)
    assert fed.recover() == 1
    assert ctl.client.get(f"/v1/fl/jobs/{live}", headers=ADMIN).json()["status"] == "running"
    assert ctl.client.get(f"/v1/fl/jobs/{quiet}", headers=ADMIN).json()["status"] == "failed"
    # the other replica's job is not ours to finish: the outcome is dropped, the row keeps its state
    assert fed._finish(live, JobState.SUCCEEDED) is False
    assert ctl.client.get(f"/v1/fl/jobs/{live}", headers=ADMIN).json()["status"] == "running"
    with ctl.state.sessions.begin() as s:
        s.get(FlJob, live).claimed_by = fed.replica_id  # type: ignore[union-attr]
    fed.claims.beat()
    assert fed._finish(live, JobState.CANCELLED, error="cancelled") is True
    assert ctl.client.get(f"/v1/fl/jobs/{live}", headers=ADMIN).json()["status"] == "cancelled"


# ---------------------------------------------------------------- the fl-join command


def test_fl_join_is_a_signed_command_without_a_model_that_the_agent_accepts(ctl: Ctl) -> None:
    from edge_agent.link.signed import SignatureInvalid, verify_command
    from fedge_protocol import CommandKind, open_envelope
    from fedge_protocol.fl_commands import FlData, FlJoin, FlPrivacyPlan, FlTls

    device = ctl.devices[0]
    params = FlJoin(job_id="j1", superlink="127.0.0.1:9", tls=FlTls(root_certificate=ctl.state.fleet.ca.certificate_pem),
                    node_id=5, network="digits-linear", rounds=2, local_epochs=1, round_timeout_s=60,
                    data=FlData(dataset="digits", input_shape=[None, 1, 8, 8]),
                    privacy=FlPrivacyPlan(local_dp=True, target_epsilon=2.0, delta=1e-5),
                    leave_after="2099-01-01T00:00:00+00:00")  # fmt: skip
    command = ctl.state.commands.create_fl_join(device, params, "fl-job:j1")
    envelope = ctl.state.commands.signed(command)
    payload = verify_command(envelope, ctl.state.fleet.ca.certificate, device)
    assert payload["kind"] == CommandKind.FL_JOIN and payload["model"] is None
    assert FlJoin.model_validate(payload["params"]) == params
    body, _ = open_envelope(envelope)
    doctored = json.loads(body) | {"kind": "grid-run"}  # a grid-run without a model is still refused
    with pytest.raises(SignatureInvalid, match="lacks model"):
        verify_command(
            ctl.state.fleet.ca.sign_document(doctored, envelope_type()),
            ctl.state.fleet.ca.certificate,
            device,
        )
    pending = ctl.client.get(f"/v1/devices/{device}/commands", headers=ADMIN).json()["items"]
    assert pending[0]["kind"] == "fl-join" and pending[0]["model_id"] is None
    r = ctl.client.post(
        f"/v1/devices/{device}/commands", headers=ADMIN, json={"kind": "fl-join", "model_id": "m"}
    )
    assert r.status_code == 422 and "sent by federated-learning jobs" in r.json()["detail"]


def envelope_type() -> Any:
    from fedge_protocol import DocumentType

    return DocumentType.COMMAND


# ---------------------------------------------------------------- the FAB, the grid filter, the migration


def test_the_fab_declares_exactly_the_run_config_keys_the_serverapp_reads() -> None:
    from controller.federation.flower import build_fab, fab_config
    from controller.federation.flower_app import config_keys

    assert sorted(fab_config()) == config_keys()
    fab, sha = build_fab()
    assert len(fab) < 64 * 1024 and len(sha) == 64


def test_the_participant_grid_shows_only_the_jobs_nodes_and_gives_up_on_missing_ones() -> None:
    from controller.federation.flower_app import NodesUnavailable, ParticipantGrid, parse_nodes

    class Inner:
        ids = [1, 2, 3]

        def get_node_ids(self) -> list[int]:
            return self.ids

    now = [0.0]
    grid = ParticipantGrid(Inner(), parse_nodes("1 3"), min_nodes=2, wait_s=10, clock=lambda: now[0])  # type: ignore[arg-type]
    assert list(grid.get_node_ids()) == [1, 3]
    Inner.ids = [1, 2]
    assert list(grid.get_node_ids()) == [1]  # short: the clock starts
    now[0] = 9.0
    assert list(grid.get_node_ids()) == [1]
    Inner.ids = [1, 3]
    assert list(grid.get_node_ids()) == [1, 3]  # back: the clock is reset
    Inner.ids = [1]
    grid.get_node_ids()
    now[0] = 20.0
    with pytest.raises(NodesUnavailable, match="only 1 of the job's 2 participant device"):
        grid.get_node_ids()
    assert parse_nodes("") is None


def test_the_migration_builds_the_schema_the_models_declare(tmp_path: Path) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from controller.db.models import Base
    from controller.db.session import make_engine, migrate

    engine = make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    migrate(engine)
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    engine.dispose()
