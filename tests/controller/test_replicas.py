"""Two controller replicas on one PostgreSQL + S3 + JSON-RPC chain take the status reports of one rollout
at the same moment: the last reports of a wave, one at each replica, settle it once and start the next wave
once (each report takes the deployment's row first, ``SELECT ... FOR UPDATE``)."""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from controller.db.models import Deployment, DeploymentTarget, Device
from controller.fleet.deployments import Rollouts
from controller.state import ControllerState, build_state
from edge_agent.identity import enroll
from tests.conftest import LiveServer, SettingsFactory
from tests.e2e.helpers import add_model, deploy, enrollment_token, upload_onnx


@pytest.fixture
def replicas(
    make_settings: SettingsFactory, tmp_path: Path, postgres_db_url: str, s3_server, shared_anvil
) -> Iterator[tuple[LiveServer, ControllerState]]:  # type: ignore[no-untyped-def]
    """Replica a serves HTTP on loopback; replica b is a second state on the same services."""
    prefix = f"r{uuid.uuid4().hex[:10]}-"
    states = [
        build_state(
            make_settings(
                data_dir=tmp_path / name,
                database_url=postgres_db_url,
                **s3_server.controller_settings(prefix),
                broker_backend="none",
            ),
            shared_anvil,
            start_jobs=False,
        )
        for name in ("a", "b")
    ]
    try:
        with LiveServer(states[0]) as server:
            yield server, states[1]
    finally:
        for s in states:
            s.close()


class _Interleave:
    """Makes two status-report transactions count their wave at the same moment when nothing serialises
    them (each waits up to ``wait_s`` for the other before counting): the race two replicas can run."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, wait_s: float = 1.5) -> None:
        self.armed = False
        self.barrier = threading.Barrier(2, timeout=wait_s)
        original = Rollouts._wave_counts

        def counts(s: Any, dep: Deployment, wave: int) -> dict[str, int]:
            if self.armed:
                # broken: the other one is waiting on the row lock
                with contextlib.suppress(threading.BrokenBarrierError):
                    self.barrier.wait()
            return original(s, dep, wave)

        monkeypatch.setattr(Rollouts, "_wave_counts", staticmethod(counts))

    def arm(self) -> None:
        self.barrier.reset()
        self.armed = True


def _at_once(calls: list[tuple[Rollouts, str, dict[str, Any]]]) -> None:
    errors: list[BaseException] = []

    def run(rollouts: Rollouts, device_id: str, report: dict[str, Any]) -> None:
        try:
            rollouts.report(device_id, report)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=call) for call in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors


def test_reports_at_two_replicas_advance_each_wave_exactly_once(
    replicas: tuple[LiveServer, ControllerState], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, b = replicas
    a = server.state
    interleave = _Interleave(monkeypatch)
    with httpx.Client(base_url=server.url, timeout=30) as http:
        devices = [
            enroll(server.url, enrollment_token(http), tmp_path / f"d{i}", facts={"cpu_count": 1}).device_id
            for i in range(4)
        ]
        model_id, version = upload_onnx(http, add_model(1.0))
        with a.sessions() as s:
            revisions = {d: s.get(Device, d).desired_revision for d in devices}  # type: ignore[union-attr]
        dep_id = deploy(http, model_id, version, devices, strategy={"waves": [0.5, 1.0]})

    def waves() -> dict[int, list[str]]:
        with a.sessions() as s:
            rows = s.scalars(select(DeploymentTarget).where(DeploymentTarget.deployment_id == dep_id)).all()
        by_wave: dict[int, list[str]] = {}
        for t in sorted(rows, key=lambda t: t.device_id):
            by_wave.setdefault(t.wave, []).append(t.device_id)
        return by_wave

    first, second = waves()[0], waves()[1]
    assert len(first) == len(second) == 2
    for wave in (first, second):
        interleave.arm()
        _at_once(
            [
                (replica.rollouts, device_id, {"state": "succeeded", "deployment_id": dep_id, "seq": 1})
                for replica, device_id in zip((a, b), wave, strict=True)
            ]
        )
        interleave.armed = False
        with a.sessions() as s:
            dep = s.get(Deployment, dep_id)
            assert dep is not None
            if wave is first:  # the wave settled once: the second one started
                assert (dep.state, dep.current_wave) == ("rolling", 1)
                pending = s.scalars(
                    select(DeploymentTarget.state).where(
                        DeploymentTarget.deployment_id == dep_id, DeploymentTarget.wave == 1
                    )
                ).all()
                assert sorted(pending) == ["pending", "pending"]
            else:
                assert (dep.state, dep.current_wave) == ("succeeded", 1)

    with a.sessions() as s:
        targets = s.scalars(select(DeploymentTarget).where(DeploymentTarget.deployment_id == dep_id)).all()
        assert sorted(t.state for t in targets) == ["succeeded"] * 4
        for device_id in devices:  # each device was given the model once: no wave started twice
            device = s.get(Device, device_id)
            assert device is not None
            assert device.desired_revision == revisions[device_id] + 1
