"""The job manager: queue, claim, run and finish training jobs.

A job runs in four steps, each of which can fail it with a clear reason and leave nothing behind:
  1. pre-step   the dataset is fetched and its SHA-256 checked against the chain record; a training
                package is fetched and checked against the model's on-chain training digest
  2. run        the JobRunner executes the program (limits, timeout, cancel, captured log)
  3. post-step  the single artifact in output/ becomes a new model version: stored, hashed, and
                ``verify(resultHash)`` called on chain (or an artifact record for later results)
  4. cleanup    the job's credential is revoked and the dataset copy deleted (logs are kept)

Jobs live in SQL, so any controller replica may claim a queued job (``UPDATE ... WHERE state='queued'``:
exactly one wins). The claiming replica stamps the job with its id and keeps a heartbeat on it every
``HEARTBEAT_SECONDS``; at start-up and on every heartbeat, running jobs whose heartbeat is older than
``STALE_SECONDS`` (their controller died) are failed with a reason, so a replica starting beside a busy
one leaves that one's jobs alone. Queued jobs resume. Finishing is conditional too (``UPDATE ... WHERE
claimed_by = me AND state = 'running'``): a replica whose heartbeat stalled long enough for another to fail
its job stops the run when it notices and never overwrites that outcome or publishes a version.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import sys
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from controller.config import ControllerSettings
from controller.db.models import ApiToken, Job, Model, utcnow
from controller.errors import NotFound, ProblemError, Unprocessable
from controller.registry.hashing import IntegrityError
from controller.registry.service import Registry
from controller.security import tokens
from controller.security.principal import Role
from controller.training.base import JobOutcome, JobRunner, JobSpec, JobState, request_cancel
from controller.training.claims import HEARTBEAT_SECONDS, STALE_SECONDS, JobClaims, new_replica_id

log = logging.getLogger("fedge.jobs")

ARTIFACT_NAMES = ("model.pt2", "model.pt", "model.skops", "model.pkl", "model.joblib", "model.onnx")
_FRAMEWORK_BY_NAME = {
    "model.pt2": "pytorch",
    "model.pt": "pytorch",
    "model.skops": "sklearn",
    "model.pkl": "sklearn",
    "model.joblib": "sklearn",
    "model.onnx": "onnx",
}


class JobFailed(Exception):
    """A step failed; the message is the job's ``error``."""


class JobManager:
    """Runs queued jobs on ``settings.job_workers`` threads of this process."""

    HEARTBEAT_SECONDS = HEARTBEAT_SECONDS
    STALE_SECONDS = STALE_SECONDS

    def __init__(
        self,
        settings: ControllerSettings,
        sessions: sessionmaker[Session],
        registry: Registry,
        runner: JobRunner,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.registry = registry
        self.runner = runner
        self.root = settings.data_dir / "jobs"
        self.root.mkdir(parents=True, exist_ok=True)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self._cancels: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self.replica_id = new_replica_id(settings)
        """Who claims jobs here: stamped on each job this process runs (``Job.claimed_by``)."""
        self.claims = JobClaims(
            sessions,
            Job,
            self.replica_id,
            stale_seconds=self.STALE_SECONDS,
            heartbeat_seconds=self.HEARTBEAT_SECONDS,
        )

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Fail jobs a dead controller left running, then start the workers."""
        self.recover()
        for i in range(self.settings.job_workers):
            t = threading.Thread(target=self._worker, name=f"fedge-job-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        self._threads.append(self.claims.start_heartbeat(self._stop, self.recover, "job"))

    def stop(self, timeout: float = 10.0) -> None:
        """Stop claiming jobs; cancel the ones running here."""
        self._stop.set()
        self._wake.set()
        with self._lock:
            for ev in self._cancels.values():
                ev.set()
        for t in self._threads:
            t.join(timeout)

    def recover(self) -> int:
        """Mark jobs left ``running`` by a controller that died (no heartbeat for ``STALE_SECONDS``, or
        none at all) as failed; jobs another live replica runs, and queued jobs, stay as they are."""
        with self.sessions.begin() as s:
            stale = self.claims.stale(s)
            for job in stale:
                job.state = JobState.FAILED.value
                job.error = "the controller stopped while the job was running; start it again"
                job.finished_at = utcnow()
                self._revoke(s, job)
        if stale:
            log.warning("marked %d interrupted job(s) as failed", len(stale))
        return len(stale)

    # -------------------------------------------------------------------- API
    def submit(self, model_id: str, hyperparameters: dict[str, Any], created_by: str) -> Job:
        """Queue a training job for a registered model."""
        return self._submit(model_id, hyperparameters, created_by, refuse_unrunnable=True)

    def submit_or_fail(self, model_id: str, hyperparameters: dict[str, Any], created_by: str) -> Job:
        """Like :meth:`submit`, but a model this controller's runner cannot train (a container image on
        the 'local' runner) gets a job recorded ``failed`` with the reason instead of a 422: for callers
        whose registration starts training (the seed's ``POST /model``), the outcome is the job's."""
        return self._submit(model_id, hyperparameters, created_by, refuse_unrunnable=False)

    def _submit(
        self, model_id: str, hyperparameters: dict[str, Any], created_by: str, *, refuse_unrunnable: bool
    ) -> Job:
        model = self.registry.get_model(model_id)
        if not model.training:
            raise Unprocessable(f"model {model_id} has no training spec", field="training")
        unrunnable = None
        if model.training.get("kind") == "container" and self.settings.job_runner == "local":
            unrunnable = (
                "this model trains in a container image; the controller runs jobs with the 'local' runner "
                "(set FEDGE_JOB_RUNNER=container)"
            )
            if refuse_unrunnable:
                raise Unprocessable(unrunnable, field="training.kind")
        params = {**(model.training.get("hyperparameters") or {}), **hyperparameters}
        with self.sessions.begin() as s:
            job = Job(
                model_id=model_id,
                state=JobState.QUEUED.value if unrunnable is None else JobState.FAILED.value,
                runner=self.runner.name,
                hyperparameters=params,
                metrics={},
                created_by=created_by,
            )
            if unrunnable is not None:
                job.error, job.finished_at = unrunnable, utcnow()
            s.add(job)
        if unrunnable is None:
            self._wake.set()
        return job

    def get(self, job_id: str) -> Job:
        with self.sessions() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise NotFound(f"job {job_id} not found")
            return job

    def list_jobs(self, model_id: str | None, limit: int, offset: int) -> list[Job]:
        with self.sessions() as s:
            q = select(Job)
            if model_id:
                q = q.where(Job.model_id == model_id)
            return list(s.scalars(q.order_by(Job.created_at.desc()).limit(limit).offset(offset)).all())

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued job now, or ask the replica running it to kill it."""
        request_cancel(self.sessions, Job, job_id, "job", self._cancels, self._lock)
        return self.get(job_id)

    def workdir(self, job_id: str) -> Path:
        return self.root / job_id

    def log_tail(self, job_id: str, lines: int = 20) -> list[str]:
        path = self.workdir(job_id) / "job.log"
        if not path.exists():
            return []
        with open(path, "rb") as fh:
            fh.seek(max(0, path.stat().st_size - 64 * 1024))
            return fh.read().decode("utf-8", "replace").splitlines()[-lines:]

    # ---------------------------------------------------------------- workers
    def _worker(self) -> None:
        while not self._stop.is_set():
            job = self._claim()
            if job is None:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            try:
                self._run(job)
            except Exception:  # a bug here must not kill the worker
                log.exception("job %s crashed the worker", job.id)
                self._finish(job.id, JobState.FAILED, error="internal error while running the job; see logs")

    def _claim(self) -> Job | None:
        job_id = self.claims.claim_next()
        return None if job_id is None else self.get(job_id)

    def _finish(
        self, job_id: str, state: JobState, *, error: str | None = None, version: int | None = None
    ) -> bool:
        """End a job this replica runs (``UPDATE ... WHERE claimed_by = me AND state = 'running'``). False
        when the job is no longer ours: another replica failed it while our heartbeat had stalled, so its
        outcome stands and ours is dropped."""
        with self.sessions.begin() as s:
            if not self.claims.finish(
                s, job_id, {"state": state.value, "error": error, "model_version": version}
            ):
                return False
            job = s.get(Job, job_id)
            if job is not None:
                self._revoke(s, job)
        return True

    @staticmethod
    def _revoke(s: Session, job: Job) -> None:
        if job.token_id:
            s.execute(update(ApiToken).where(ApiToken.id == job.token_id).values(revoked_at=utcnow()))

    def _run(self, job: Job) -> None:
        workdir = self.workdir(job.id)
        cancel = threading.Event()
        with self._lock:
            self._cancels[job.id] = cancel
        monitor = threading.Thread(target=self._monitor, args=(job.id, workdir, cancel), daemon=True)
        try:
            spec = self._prepare(job, workdir)
            if cancel.is_set():
                raise _Cancelled()
            monitor.start()
            outcome = self.runner.run(spec, cancel)
            self._read_metrics(job.id, workdir)
            if outcome.state is JobState.CANCELLED:
                raise _Cancelled()
            if outcome.state is not JobState.SUCCEEDED:
                raise JobFailed(outcome.reason or f"the training program failed ({outcome.state})")
            if not self.claims.still_ours(job.id):  # failed by another replica meanwhile: publish nothing
                raise _Cancelled()
            version = self._publish(job, workdir, outcome)
            self._finish(job.id, JobState.SUCCEEDED, version=version)
            log.info("job %s succeeded: model %s version %s", job.id, job.model_id, version)
        except _Cancelled:
            self._finish(job.id, JobState.CANCELLED, error="cancelled")
        except JobFailed as exc:
            self._append_log(workdir, f"[fedge] job failed: {exc}")
            self._finish(job.id, JobState.FAILED, error=str(exc))
        finally:
            cancel.set()  # stops the monitor
            with self._lock:
                self._cancels.pop(job.id, None)
            with contextlib.suppress(OSError):
                shutil.rmtree(workdir / "input")

    # ------------------------------------------------------------------ steps
    def _prepare(self, job: Job, workdir: Path) -> JobSpec:
        """Pre-step: job dir, verified dataset, verified code, scoped credential, command and env."""
        model = self.registry.get_model(job.model_id)
        training: dict[str, Any] = dict(model.training or {})
        for sub in ("input", "output", "code"):
            (workdir / sub).mkdir(parents=True, exist_ok=True)
        ds = self.registry.get_dataset(model.dataset_id)
        chain_sha, _ = self.registry.chain_dataset_hash(ds)
        ext = _suffix(ds.filename)
        dataset_path = workdir / "input" / f"dataset{ext}"
        try:
            chunks = self.registry.verified_chunks(ds.bucket, ds.object_key, chain_sha, f"dataset {ds.id}")
            _write(dataset_path, chunks)
        except (ProblemError, IntegrityError) as exc:
            detail = exc.detail if isinstance(exc, ProblemError) else str(exc)
            raise JobFailed(f"dataset check refused the job: {detail}") from exc
        (workdir / "input" / "hyperparameters.json").write_text(json.dumps(job.hyperparameters))
        self._append_log(workdir, f"[fedge] dataset {ds.id} verified against chain (sha256 {chain_sha})")

        env = {
            "FEDGE_JOB_ID": job.id,
            "FEDGE_MODEL_ID": job.model_id,
            "FEDGE_JOB_DIR": "{job_dir}",
            "FEDGE_DATASET_PATH": "{job_dir}/input/" + dataset_path.name,
            "FEDGE_HYPERPARAMETERS": json.dumps(job.hyperparameters),
            "FEDGE_OUTPUT_DIR": "{job_dir}/output",
            "FEDGE_METRICS_FILE": "{job_dir}/metrics.jsonl",
            "PYTHONPATH": "{job_dir}/code",
        }
        if self.settings.public_url:
            env["FEDGE_API_URL"] = self.settings.public_url
        with self.sessions.begin() as s:
            plaintext, row = tokens.mint(
                s,
                name=f"job-{job.id}",
                role=Role.JOB,
                subject=f"job:{job.id}",
                ttl_seconds=self.settings.job_timeout_seconds + 600,
                model_id=job.model_id,
            )
            s.execute(update(Job).where(Job.id == job.id).values(token_id=row.id))
        env["FEDGE_JOB_TOKEN"] = plaintext

        image: str | None = None
        if training.get("kind") == "container":
            image = str(training["image"])
            command: list[str] = []
        else:
            if training.get("package_key"):
                self._fetch_package(model, training, workdir)
            command = _python_command(self.settings.job_python or sys.executable, str(training["entrypoint"]))
        return JobSpec(
            job_id=job.id,
            workdir=workdir,
            command=command,
            env=env,
            image=image,
            timeout_s=float(self.settings.job_timeout_seconds),
            memory_bytes=self.settings.job_memory_bytes,
            max_output_bytes=self.settings.job_max_output_bytes,
        )

    def _fetch_package(self, model: Model, training: dict[str, Any], workdir: Path) -> None:
        """Fetch the training package; its SHA-256 must equal the model's on-chain training digest."""
        record = self.registry.chain_model_record(model.id)
        expected = str(record["train_image_hash"]) if record else None
        key = str(training["package_key"])
        try:
            chunks = self.registry.verified_chunks(
                self.registry.buckets.packages, key, expected, f"training package of model {model.id}"
            )
            data = b"".join(chunks)
        except (ProblemError, IntegrityError) as exc:
            detail = exc.detail if isinstance(exc, ProblemError) else str(exc)
            raise JobFailed(f"training package check refused the job: {detail}") from exc
        code = workdir / "code"
        try:
            _unpack(data, code)
        except (tarfile.TarError, zipfile.BadZipFile, ValueError) as exc:
            raise JobFailed(f"cannot unpack the training package: {exc}") from exc
        self._append_log(workdir, f"[fedge] training package verified against chain (sha256 {expected})")

    def _publish(self, job: Job, workdir: Path, outcome: JobOutcome) -> int:
        """Post-step: the single artifact in output/ becomes a new verified model version."""
        out = workdir / "output"
        found = [p for p in out.iterdir() if p.name in ARTIFACT_NAMES] if out.is_dir() else []
        if not found:
            names = ", ".join(sorted(p.name for p in out.iterdir())) if out.is_dir() else ""
            raise JobFailed(
                "the training program wrote no artifact to output/ (expected one of "
                f"{', '.join(ARTIFACT_NAMES)}; found: {names or 'nothing'})"
            )
        if len(found) > 1:
            raise JobFailed(
                f"the training program wrote several artifacts: {', '.join(p.name for p in found)}"
            )
        artifact = found[0]
        size = artifact.stat().st_size
        if size == 0:
            raise JobFailed(f"the artifact {artifact.name} is empty")
        if size > self.settings.job_max_output_bytes:
            raise JobFailed(
                f"the artifact is {size} bytes, over the limit of {self.settings.job_max_output_bytes}"
            )
        descriptor: dict[str, Any] = {"framework": _FRAMEWORK_BY_NAME[artifact.name]}
        meta_path = out / "model.json"
        if meta_path.exists():
            try:
                loaded = json.loads(meta_path.read_text())
            except ValueError as exc:
                raise JobFailed(f"output/model.json is not valid JSON: {exc}") from exc
            if not isinstance(loaded, dict):
                raise JobFailed("output/model.json must be a JSON object")
            descriptor.update(loaded)
        descriptor["metrics"] = self.get(job.id).metrics
        try:
            row = self.registry.add_version_from_file(
                job.model_id,
                "trained",
                artifact,
                created_by=f"job:{job.id}",
                fmt=str(descriptor.get("framework")),
                source_version=None,
                descriptor=descriptor,
                limit=self.settings.job_max_output_bytes,
            )
        except ProblemError as exc:
            raise JobFailed(f"could not store the result: {exc.detail}") from exc
        self._append_log(
            workdir, f"[fedge] stored version {row.version} sha256 {row.sha256}, verified on chain"
        )
        return row.version

    # ------------------------------------------------------------- monitoring
    def _monitor(self, job_id: str, workdir: Path, cancel: threading.Event) -> None:
        """Copy the newest metrics into SQL and honour cancel requests made on any replica."""
        while not cancel.wait(1.0):
            self._read_metrics(job_id, workdir)
            if self.claims.must_stop(job_id):  # cancelled, or failed by another replica meanwhile
                cancel.set()

    def _read_metrics(self, job_id: str, workdir: Path) -> None:
        path = workdir / "metrics.jsonl"
        if not path.exists():
            return
        latest: dict[str, Any] = {}
        for line in _tail_lines(path):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                latest.update(value)
        if not latest:
            return
        progress = latest.get("progress")
        with self.sessions.begin() as s:
            job = s.get(Job, job_id)
            if job is not None and job.claimed_by == self.replica_id:  # not one another replica ended
                job.metrics = latest
                if isinstance(progress, int | float):
                    job.progress = max(0.0, min(1.0, float(progress)))

    @staticmethod
    def _append_log(workdir: Path, line: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        with open(workdir / "job.log", "a", encoding="utf-8") as fh:
            fh.write(line + "\n")


class _Cancelled(Exception):
    pass


def _tail_lines(path: Path, max_bytes: int = 256 * 1024) -> Iterator[str]:
    with open(path, "rb") as fh:
        fh.seek(max(0, path.stat().st_size - max_bytes))
        yield from fh.read().decode("utf-8", "replace").splitlines()


def _write(path: Path, chunks: Iterator[bytes]) -> None:
    with open(path, "wb") as fh:
        for chunk in chunks:
            fh.write(chunk)


def _suffix(filename: str | None) -> str:
    if filename and "." in filename:
        ext = "." + filename.rsplit(".", 1)[1].lower()
        if ext.isascii() and ext[1:].isalnum() and len(ext) <= 10:
            return ext
    return ".bin"


def _python_command(python: str, entrypoint: str) -> list[str]:
    """``pkg.mod`` runs as ``python -m pkg.mod``; ``pkg.mod:fn`` imports the module and calls ``fn()``."""
    module, _, func = entrypoint.partition(":")
    if not module.replace(".", "").replace("_", "").isalnum():
        raise JobFailed(f"invalid entrypoint {entrypoint!r}")
    if not func:
        return [python, "-m", module]
    if not func.replace("_", "").isalnum():
        raise JobFailed(f"invalid entrypoint {entrypoint!r}")
    code = f"import sys, importlib; sys.exit(importlib.import_module({module!r}).{func}() or 0)"
    return [python, "-c", code]


def _unpack(data: bytes, dest: Path) -> None:
    """Unpack a training package safely: a pure-Python wheel or a .zip is extracted with path checks, a
    .tar(.gz) with tarfile's 'data' filter (no absolute paths, no '..', no links outside)."""
    if data[:4] == b"PK\x03\x04":
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            for info in zf.infolist():
                target = (dest / info.filename).resolve()
                if not str(target).startswith(str(dest.resolve()) + "/") and target != dest.resolve():
                    raise ValueError(f"unsafe path in archive: {info.filename}")
            zf.extractall(dest)  # noqa: S202 - every member's path was checked above
        return
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tf:
        tf.extractall(dest, filter="data")
