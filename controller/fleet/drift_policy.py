"""Closing the loop: what the controller does when a device reports drift on a model.

Each model has a drift policy (``models.drift_policy``; :class:`controller.schemas.drift.DriftPolicyIn`):

- ``none`` (the default): the event is only stored (``GET /v1/devices/{id}/events``);
- ``notify``: a drift action is recorded (``GET /v1/models/{id}/drift-actions``), logged, and POSTed as
  JSON to the policy's ``webhook_url`` when one is set;
- ``retrain``: a training job (the model's training spec) or, with ``retrain_with: fl``, an FL job over the
  devices that run the model; when its new version exists it is translated to ONNX (validated against the
  source like ``POST /v1/models/{id}/translate``) and rolled out to the devices that run the model as a
  canary deployment (waves, failure gate, automatic rollback). Each step's id is recorded on the action.

Debounce: one action per model per ``debounce_seconds``, and never a second one while a retrain of the
model is still open; later events are folded into the open action (its ``events`` count).

The telemetry ingest (``Commands.record_telemetry``, over MQTT or HTTP) hands each stored event to
:meth:`DriftLoop.submit` after its transaction committed: a non-blocking put on a bounded queue. The
loop's own thread does everything else (webhook, job submission, translation, deployment), so neither the
MQTT network thread nor an HTTP request ever waits on it. Open retrain actions live in SQL and are advanced
by polling, so a controller restart resumes them; a state change is claimed with a conditional UPDATE, so
two replicas never translate the same result twice.
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import ValidationError
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from controller.db.models import Deployment, Device, DriftAction, FlJob, Job, Model, utcnow
from controller.errors import NotFound, ProblemError, Unprocessable
from controller.fleet.devices import ACTIVE
from controller.schemas.drift import DriftActionOut, DriftPolicyIn

if TYPE_CHECKING:
    from controller.config import ControllerSettings
    from controller.federation.manager import FlJobManager
    from controller.fleet.deployments import Rollouts
    from controller.registry.service import Registry
    from controller.training.manager import JobManager

log = logging.getLogger("fedge.fleet.drift")

ACTOR = "drift-policy"
"""``created_by`` of the jobs, versions and deployments a drift policy starts."""

NOTIFIED, TRAINING, TRANSLATING, DEPLOYED, FAILED = (
    "notified",
    "training",
    "translating",
    "deployed",
    "failed",
)
OPEN = (TRAINING, TRANSLATING)
STATES = (NOTIFIED, TRAINING, TRANSLATING, DEPLOYED, FAILED)
_TERMINAL_JOB = ("succeeded", "failed", "cancelled")
NONE_POLICY = DriftPolicyIn(on_drift="none")
STARTLESS_SECONDS = 60.0
"""A retrain action with no job after this long was cut short before its job started (it is failed, so it
no longer holds the model's later events)."""

Event = tuple[str, int, dict[str, Any]]


def action_out(a: DriftAction) -> DriftActionOut:
    return DriftActionOut(
        id=a.id,
        model_id=a.model_id,
        kind=a.kind,
        state=a.state,
        device_id=a.device_id,
        event_seq=a.event_seq,
        detector=a.detector,
        version=a.version,
        events=a.events,
        steps=dict(a.steps or {}),
        error=a.error,
        created_at=a.created_at,
        updated_at=a.updated_at,
    )


class DriftLoop:
    """The drift policies of the models and the worker that carries out their actions."""

    def __init__(
        self,
        settings: ControllerSettings,
        sessions: sessionmaker[Session],
        registry: Registry,
        jobs: JobManager,
        federation: FlJobManager,
        rollouts: Rollouts,
        *,
        tick_seconds: float = 1.0,
        queue_size: int = 10_000,
        webhook_timeout_s: float = 5.0,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.registry = registry
        self.jobs = jobs
        self.federation = federation
        self.rollouts = rollouts
        self.tick_seconds = tick_seconds
        self.webhook_timeout_s = webhook_timeout_s
        self._queue: queue.Queue[Event] = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.dropped = 0
        """Events not queued because the queue was full (each is still stored as a device event)."""
        self.on_action: Callable[[DriftAction], None] | None = None
        """Called on the worker thread with each new action (tests, metrics)."""

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self._thread is not None:
            return
        self._resume()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="fedge-drift-loop", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def submit(self, device_id: str, seq: int, body: dict[str, Any]) -> bool:
        """Hand a stored drift event to the worker (never blocks; False when the queue is full or this
        process runs no workers, ``build_state(start_jobs=False)``: the event stays stored, not acted on)."""
        if self._thread is None:
            return False
        try:
            self._queue.put_nowait((device_id, seq, body))
        except queue.Full:
            self.dropped += 1
            log.warning("drift loop queue full; event %s/%d not acted on", device_id, seq)
            return False
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                event = self._queue.get(timeout=self.tick_seconds)
            except queue.Empty:
                event = None
            try:
                if event is not None:
                    self.handle(*event)
                self.advance()
            except Exception:  # the loop outlives any one action's fault (each is recorded on it)
                log.exception("drift loop step failed")

    def _resume(self) -> None:
        """A translation a dead controller left half-done is taken up again from ``training``."""
        with self.sessions.begin() as s:
            s.execute(
                update(DriftAction)
                .where(DriftAction.state == TRANSLATING)
                .values(state=TRAINING, updated_at=utcnow())
            )

    # -------------------------------------------------------------------- policy
    def policy(self, model_id: str) -> DriftPolicyIn:
        model = self.registry.get_model(model_id)
        return DriftPolicyIn.model_validate(model.drift_policy) if model.drift_policy else NONE_POLICY

    def set_policy(self, model_id: str, policy: DriftPolicyIn) -> DriftPolicyIn:
        """Store a model's policy; 422 when it cannot be carried out (retrain without a training spec, an
        FL body that is not a valid FL job)."""
        model = self.registry.get_model(model_id)
        if policy.on_drift == "retrain" and policy.retrain_with == "training" and not model.training:
            raise Unprocessable(
                f"model {model_id} has no training spec: retrain with a training job needs one "
                "(or use retrain_with fl)",
                field="retrain_with",
            )
        if policy.fl is not None:
            self._fl_request(model_id, policy.fl, ["device-id"])  # shape only; devices are chosen later
        with self.sessions.begin() as s:
            row = s.get(Model, model_id)
            if row is None:
                raise NotFound(f"model {model_id} not found")
            row.drift_policy = policy.model_dump(mode="json")
        log.info("model %s: on_drift %s", model_id, policy.on_drift)
        return policy

    def actions(
        self, model_id: str, *, state: str | None, limit: int, offset: int
    ) -> tuple[list[DriftAction], int]:
        self.registry.get_model(model_id)
        with self.sessions() as s:
            q = select(DriftAction).where(DriftAction.model_id == model_id)
            if state:
                q = q.where(DriftAction.state == state)
            total = s.scalar(select(func.count()).select_from(q.subquery())) or 0
            rows = s.scalars(q.order_by(DriftAction.created_at.desc()).limit(limit).offset(offset)).all()
            return list(rows), total

    def get_action(self, action_id: str) -> DriftAction:
        with self.sessions() as s:
            row = s.get(DriftAction, action_id)
            if row is None:
                raise NotFound(f"drift action {action_id} not found")
            return row

    # ------------------------------------------------------------------- events
    def handle(self, device_id: str, seq: int, body: dict[str, Any]) -> DriftAction | None:
        """Act on one drift event by the model's policy: a new action, or the event folded into the open
        one (debounce). None when the policy is ``none`` or the event names no known model."""
        model_id = body.get("model_id")
        if not isinstance(model_id, str):
            return None
        now = utcnow()
        with self.sessions.begin() as s:
            model = s.get(Model, model_id)
            if model is None or not model.drift_policy:
                return None
            policy = DriftPolicyIn.model_validate(model.drift_policy)
            if policy.on_drift == "none":
                return None
            since = now - dt.timedelta(seconds=policy.debounce_seconds)
            current = s.scalars(
                select(DriftAction)
                .where(
                    DriftAction.model_id == model_id,
                    (DriftAction.created_at >= since) | DriftAction.state.in_(OPEN),
                )
                .order_by(DriftAction.created_at.desc())
                .limit(1)
            ).first()
            if current is not None:
                current.events += 1
                current.updated_at = now
                log.info("drift on model %s from %s folded into action %s", model_id, device_id, current.id)
                return None
            version = body.get("version")
            action = DriftAction(
                model_id=model_id,
                kind=policy.on_drift,
                state=NOTIFIED if policy.on_drift == "notify" else TRAINING,
                device_id=device_id,
                event_seq=seq,
                detector=str(body.get("detector"))[:32] if body.get("detector") is not None else None,
                version=version if isinstance(version, int) and not isinstance(version, bool) else None,
                events=1,
                steps={},
                created_at=now,
                updated_at=now,
            )
            s.add(action)
            s.flush()
            action_id = action.id
        log.warning(
            "drift on model %s (device %s, detector %s): %s action %s",
            model_id, device_id, body.get("detector"), policy.on_drift, action_id,
        )  # fmt: skip
        if policy.on_drift == "notify":
            if policy.webhook_url:
                self._webhook(action_id, policy.webhook_url)
        else:
            self._start_retrain(action_id, model_id, policy)
        row = self.get_action(action_id)
        if self.on_action is not None:
            self.on_action(row)
        return row

    def _webhook(self, action_id: str, url: str) -> None:
        payload = action_out(self.get_action(action_id)).model_dump(mode="json")
        try:
            r = httpx.post(url, json=payload, timeout=self.webhook_timeout_s)
            result: dict[str, Any] = {"url": url, "status": r.status_code}
        except httpx.HTTPError as exc:
            result = {"url": url, "error": f"{type(exc).__name__}: {exc}"[:500]}
            log.warning("drift webhook %s failed: %s", url, exc)
        self._steps(action_id, webhook=result)

    # ------------------------------------------------------------------ retrain
    def running_devices(self, model_id: str) -> list[str]:
        """Active devices whose desired state names the model (any version), oldest enrollment first."""
        with self.sessions() as s:
            rows = s.scalars(select(Device).where(Device.status == ACTIVE).order_by(Device.enrolled_at))
            return [d.id for d in rows if (d.desired or {}).get("model_id") == model_id]

    def _fl_request(self, model_id: str, fl: dict[str, Any], device_ids: list[str]) -> Any:
        from controller.schemas.fl import FlJobIn

        body = {**fl, "model": {"model_id": model_id}, "participants": {"device_ids": device_ids}}
        try:
            return FlJobIn.model_validate(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ()))
            raise Unprocessable(f"fl: {where}: {first.get('msg')}", field=f"fl.{where}") from None

    def _start_retrain(self, action_id: str, model_id: str, policy: DriftPolicyIn) -> None:
        devices = self.running_devices(model_id)
        self._steps(action_id, devices=devices)
        try:
            if policy.retrain_with == "fl":
                if not devices:
                    raise Unprocessable(f"no active device runs model {model_id}; an FL job needs them")
                assert policy.fl is not None
                fl_job, chosen = self.federation.submit(self._fl_request(model_id, policy.fl, devices), ACTOR)
                self._steps(action_id, fl_job_id=fl_job.id, participants=chosen)
            else:
                job = self.jobs.submit(model_id, {}, ACTOR)
                self._steps(action_id, job_id=job.id)
        except ProblemError as exc:
            self._fail(action_id, f"could not start the retrain: {exc.detail}")
        except Exception as exc:  # an engine that is not there (EngineUnavailable) and the like
            self._fail(action_id, f"could not start the retrain: {type(exc).__name__}: {exc}")

    def advance(self) -> int:
        """Move every open retrain action whose job has ended one step on; the number moved."""
        with self.sessions() as s:
            open_ids = list(s.scalars(select(DriftAction.id).where(DriftAction.state == TRAINING)))
        moved = 0
        for action_id in open_ids:
            if self._advance(action_id):
                moved += 1
        return moved

    def _job_outcome(self, steps: dict[str, Any]) -> tuple[str | None, int | None, str | None]:
        """(job state, result version, error) of the action's training or FL job."""
        with self.sessions() as s:
            if "job_id" in steps:
                job = s.get(Job, steps["job_id"])
                return (job.state, job.model_version, job.error) if job else ("failed", None, "job vanished")
            if "fl_job_id" in steps:
                fl = s.get(FlJob, steps["fl_job_id"])
                return (fl.state, fl.result_version, fl.error) if fl else ("failed", None, "FL job vanished")
        return None, None, None

    def _advance(self, action_id: str) -> bool:
        row = self.get_action(action_id)
        state, version, error = self._job_outcome(row.steps)
        if state is None:  # no job recorded: a controller that stopped between the action and its job
            if utcnow() - row.updated_at > dt.timedelta(seconds=STARTLESS_SECONDS):
                self._fail(action_id, "the controller stopped before the retrain job started", TRAINING)
                return True
            return False
        if state not in _TERMINAL_JOB:
            return False
        if state != "succeeded" or version is None:
            self._fail(action_id, f"the retrain job {state}: {error or 'no new version'}", only_from=TRAINING)
            return True
        with self.sessions.begin() as s:  # claim: one replica translates and deploys
            claimed = s.execute(
                update(DriftAction)
                .where(DriftAction.id == action_id, DriftAction.state == TRAINING)
                .values(state=TRANSLATING, updated_at=utcnow())
            ).rowcount  # type: ignore[attr-defined]
        if claimed != 1:
            return False
        self._steps(action_id, trained_version=version)
        try:
            onnx_version = row.steps.get("translated_version") or self._translate(row.model_id, version)
            self._steps(action_id, translated_version=onnx_version)
            deployment_id = self._deploy(row.model_id, onnx_version, row.steps.get("devices") or [])
        except ProblemError as exc:
            self._fail(action_id, exc.detail)
            return True
        self._steps(action_id, deployment_id=deployment_id)
        with self.sessions.begin() as s:
            action = s.get(DriftAction, action_id)
            assert action is not None
            action.state, action.updated_at = DEPLOYED, utcnow()
        log.warning(
            "drift action %s: model %s v%s -> ONNX v%s -> deployment %s",
            action_id, row.model_id, version, onnx_version, deployment_id,
        )  # fmt: skip
        return True

    def _translate(self, model_id: str, version: int) -> int:
        from controller.schemas.translation import TranslateRequest
        from controller.translation.service import translate_version

        mv = self.registry.resolve_version(model_id, version, None)
        if mv.kind != "trained":  # a job that wrote ONNX itself: nothing to translate
            return version
        req = TranslateRequest(source_version=version)
        result = translate_version(self.registry, self.settings, model_id, req, ACTOR)
        return result.version

    def _deploy(self, model_id: str, version: int, recorded: list[str]) -> str:
        from controller.fleet.deployments import DeploymentRequest

        policy = self.policy(model_id)
        devices = self.running_devices(model_id) or [d for d in recorded if self._active(d)]
        if not devices:
            raise Unprocessable(f"no active device runs model {model_id}; nothing to roll out to")
        with self.sessions() as s:
            reference = s.scalar(
                select(Deployment.reference_dataset_id)
                .where(Deployment.model_id == model_id, Deployment.reference_dataset_id.is_not(None))
                .order_by(Deployment.created_at.desc())
                .limit(1)
            )
        r = policy.rollout
        req = DeploymentRequest(
            model_id,
            version,
            devices,
            None,
            {"waves": list(r.waves)},
            r.max_failure_ratio,
            r.auto_rollback,
            reference,
            r.device_timeout_seconds,
        )
        return self.rollouts.create(req, ACTOR)

    def _active(self, device_id: str) -> bool:
        with self.sessions() as s:
            d = s.get(Device, device_id)
            return d is not None and d.status == ACTIVE

    # ------------------------------------------------------------------ writes
    def _steps(self, action_id: str, **values: Any) -> None:
        with self.sessions.begin() as s:
            action = s.get(DriftAction, action_id)
            if action is not None:
                action.steps = {**(action.steps or {}), **values}
                action.updated_at = utcnow()

    def _fail(self, action_id: str, error: str, only_from: str | None = None) -> None:
        with self.sessions.begin() as s:
            action = s.get(DriftAction, action_id)
            if action is None or (only_from is not None and action.state != only_from):
                return
            action.state, action.error, action.updated_at = FAILED, error[:4000], utcnow()
        log.warning("drift action %s failed: %s", action_id, error)
