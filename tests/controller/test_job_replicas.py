"""Two controller replicas on one PostgreSQL + S3 + JSON-RPC chain: every queued job is claimed and run by
exactly one of them, and a replica starting (or its heartbeat sweeping) beside a live one leaves that
one's running jobs alone, while a job whose replica went quiet is failed."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from controller.app import create_app
from controller.db.models import Job, ModelVersion, utcnow
from controller.state import build_state
from controller.training.base import JobState
from tests.conftest import Api, SettingsFactory, _open
from tests.controller.test_jobs import _register, _train, _wait


def _replicas(make_settings: SettingsFactory, tmp_path: Path, pg_url: str, s3, chain) -> Iterator[list[Api]]:  # type: ignore[no-untyped-def]
    prefix = f"r{uuid.uuid4().hex[:10]}-"
    states = [
        build_state(
            make_settings(
                data_dir=tmp_path / name,
                database_url=pg_url,
                **s3.controller_settings(prefix),
                job_timeout_seconds=30,
            ),
            chain,
        )
        for name in ("a", "b")
    ]
    clients = [TestClient(create_app(s)) for s in states]
    try:
        for c in clients:
            c.__enter__()
        yield [Api(s, c, s.settings) for s, c in zip(states, clients, strict=True)]
    finally:
        for c in clients:
            c.__exit__(None, None, None)
        for s in states:
            s.close()


def test_two_replicas_run_every_job_exactly_once(
    make_settings: SettingsFactory, tmp_path: Path, postgres_db_url: str, s3_server, shared_anvil
) -> None:  # type: ignore[no-untyped-def]
    for a, b in _replicas(make_settings, tmp_path, postgres_db_url, s3_server, shared_anvil):
        ids = {a.state.jobs.replica_id, b.state.jobs.replica_id}
        assert len(ids) == 2
        model_id = _register(a, tmp_path)
        with a.state.sessions() as s:
            before = s.scalar(
                select(func.count()).select_from(ModelVersion).where(ModelVersion.model_id == model_id)
            )
        jobs = [_train(a if i % 2 else b, model_id, lr=i / 10) for i in range(6)]
        done = [_wait(a, j) for j in jobs]
        assert [d["status"] for d in done] == ["succeeded"] * 6
        with a.state.sessions() as s:
            rows = s.scalars(select(Job).where(Job.id.in_(jobs))).all()
            after = s.scalar(
                select(func.count()).select_from(ModelVersion).where(ModelVersion.model_id == model_id)
            )
        assert {r.claimed_by for r in rows} <= ids and all(r.claimed_by for r in rows)
        assert (after or 0) - (before or 0) == 6  # one version per job: none ran twice
        assert len({d["model_version"] for d in done}) == 6


def test_recovery_spares_a_live_replicas_job_and_fails_a_quiet_one(
    make_settings: SettingsFactory, tmp_path: Path, postgres_db_url: str, s3_server, shared_anvil
) -> None:  # type: ignore[no-untyped-def]
    for a, b in _replicas(make_settings, tmp_path, postgres_db_url, s3_server, shared_anvil):
        model_id = _register(a, tmp_path)
        job_id = _train(a, model_id, mode="hang")
        deadline = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30)
        while True:  # one of the replicas claims it
            with a.state.sessions() as s:
                job = s.get(Job, job_id)
                assert job is not None
                if job.state == "running":
                    owner = job.claimed_by
                    break
            assert dt.datetime.now(dt.UTC) < deadline, "the job was not claimed"
        other = b if owner == a.state.jobs.replica_id else a
        assert owner in (a.state.jobs.replica_id, b.state.jobs.replica_id)

        assert other.state.jobs.recover() == 0  # the owner's heartbeat is fresh: left alone
        with a.state.sessions() as s:
            assert s.get(Job, job_id).state == "running"  # type: ignore[union-attr]

        # the owner goes quiet (as if it died): no heartbeat for longer than STALE_SECONDS
        stale = utcnow() - dt.timedelta(seconds=other.state.jobs.STALE_SECONDS + 5)
        with a.state.sessions.begin() as s:
            s.execute(
                update(Job).where(Job.id == job_id).values(claimed_by="dead-replica", heartbeat_at=stale)
            )
        assert other.state.jobs.recover() == 1
        job = _wait(other, job_id)
        assert job["status"] == "failed"
        assert "controller stopped while the job was running" in job["error"]


def test_a_job_failed_elsewhere_is_not_overwritten_by_its_stalled_replica(
    make_settings: SettingsFactory, tmp_path: Path, shared_evm
) -> None:  # type: ignore[no-untyped-def]
    """The replica running a job stalled; another one failed the job meanwhile. When the first one wakes up,
    it stops the run and its outcome is dropped: the job stays failed, no version is published."""
    for api in _open(make_settings(job_timeout_seconds=60), shared_evm):
        model_id = _register(api, tmp_path)
        job_id = _train(api, model_id, mode="hang")
        deadline = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30)
        while (job := api.state.jobs.get(job_id)).state != "running":
            assert dt.datetime.now(dt.UTC) < deadline, "the job was not claimed"
        assert job.claimed_by == api.state.jobs.replica_id
        with api.state.sessions.begin() as s:  # what another replica's recovery sweep writes
            s.execute(
                update(Job)
                .where(Job.id == job_id)
                .values(state="failed", error="failed by another replica", finished_at=utcnow())
            )

        assert api.state.jobs._finish(job_id, JobState.SUCCEEDED, version=99) is False
        with api.state.jobs._lock:  # the owner notices within a second and stops the run
            running = api.state.jobs._cancels.get(job_id)
        if running is not None:
            assert running.wait(10), "the run was not stopped"
        deadline = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=10)
        while job_id in api.state.jobs._cancels:
            assert dt.datetime.now(dt.UTC) < deadline, "the run did not end"
        job = api.state.jobs.get(job_id)
        assert (job.state, job.error, job.model_version) == ("failed", "failed by another replica", None)
        with api.state.sessions() as s:
            versions = s.scalar(
                select(func.count()).select_from(ModelVersion).where(ModelVersion.model_id == model_id)
            )
        assert versions == 0  # nothing published: registration made none, the dropped run none
