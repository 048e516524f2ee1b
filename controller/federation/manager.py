"""FL jobs: queue, claim, run on the federation engine, publish (the JobManager skeleton for federated jobs).

A job goes, each step able to fail it with a reason and leave nothing half-written:

  1. submit   checked in full before it is queued (422 names the field): engine, model and start version,
              network, strategy and its parameters, participants (ids / selector -> active devices),
              ``min_clients`` <= eligible devices, local DP and the privacy mirror (a participant whose
              mirrored remaining budget is below the planned epsilon is refused)
  2. invite   the engine is started; each participant's enrolled public key (from its certificate) is
              registered for SuperNode authentication and the device gets a signed ``fl-join`` command
  3. run      the engine runs the job; every round report (POSTed by the ServerApp to
              ``/v1/fl/jobs/{id}/reports`` with the job's own token) is stored at once: round metrics,
              participants, stragglers, bytes, budget refusals (counted per device, which is excluded
              from later rounds: a refusal never fails the job) and the privacy mirror
  4. publish  the final global parameters become a ``torch.export`` program, the FL run is recorded on
              chain (``record_fl_run``: engine, strategy, rounds, participant hashes, the largest epsilon a
              contributing device reported, delta, final hash), then the program is stored as the model's
              next ``trained`` version (SHA-256, chain record)
  5. cleanup  the job's token is revoked; every invited device gets ``fl-leave``

Jobs live in SQL; a replica claims a queued job with ``UPDATE ... WHERE state='queued'``, stamps it with its
id and keeps a heartbeat on it (``controller/training/claims.py``, as for training jobs): the job's
SuperLink runs on that replica. At start-up and on every heartbeat a job left ``running`` by a replica that
went quiet is marked failed with that reason (its engine run died with that controller: the supervised
SuperLink is stopped with it, or restarted clean); a job a live replica runs and queued jobs stay. A
replica finishes only a job that is still its own.

Revocation: the manager listens to the fleet's after-commit events; a revoked device's node is
unregistered on the SuperLink at once (or at the engine's next start when it is not running), so the
SuperLink refuses that device's SuperNode from its next request on.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import math
import shutil
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from controller.config import ControllerSettings
from controller.db.models import (
    ApiToken,
    Device,
    DevicePrivacy,
    FlJob,
    FlNode,
    FlParticipant,
    FlRound,
    Model,
    ModelVersion,
    utcnow,
)
from controller.errors import Conflict, Forbidden, NotFound, ProblemError, ServiceUnavailable, Unprocessable
from controller.federation.audit import FINAL_AGGREGATE_KEY, AuditTrail, audit_lineage_exempt
from controller.federation.base import (
    EngineError,
    EngineUnavailable,
    FederationEngine,
    FederationSpec,
)
from controller.fleet.devices import ACTIVE
from controller.registry.hashing import IntegrityError
from controller.schemas.fl import FlJobIn
from controller.security import tokens
from controller.security.principal import Principal, Role
from controller.training.base import JobState, request_cancel
from controller.training.claims import JobClaims, new_replica_id
from fedge_protocol.federation import ReplyKey
from fedge_protocol.fl_commands import FlData, FlJoin, FlLeave, FlPrivacyPlan, FlTls

if TYPE_CHECKING:
    from collections.abc import Callable

    from controller.chain.base import ChainBackend
    from controller.db.models import DeviceCommand
    from controller.fleet.commands import Commands
    from controller.fleet.devices import Fleet
    from controller.registry.service import Registry

log = logging.getLogger("fedge.federation")

REGISTERED, UNREGISTERED = "registered", "unregistered"
SELECTED, INVITED, TRAINED, EXCLUDED, REVOKED, SKIPPED = (
    "selected",
    "invited",
    "trained",
    "excluded",
    "revoked",
    "skipped",
)
ARTIFACT = "model.pt2"
DEFAULT_MIN_CLIENTS = 2


class JobFailed(Exception):
    """A step failed; the message is the job's ``error``."""


class _Cancelled(Exception):
    pass


def report_subject(job_id: str) -> str:
    """The subject of an FL job's report token."""
    return f"fl-job:{job_id}"


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _input_shape(samples_dimension: str | None) -> list[int | None] | None:
    """``"(1,8,8)"`` -> ``[None, 1, 8, 8]``."""
    if not samples_dimension:
        return None
    text = samples_dimension.strip().strip("()[]")
    try:
        dims = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        return None
    return [None, *dims] if dims and all(d > 0 for d in dims) else None


class _FleetListener:
    """Hears the fleet's after-commit events; only revocations matter here."""

    def __init__(self, manager: FlJobManager) -> None:
        self.manager = manager

    def desired_changed(self, device_ids: list[str]) -> None:
        return None

    def command_created(self, command: DeviceCommand) -> None:
        return None

    def device_revoked(self, device_id: str) -> None:
        self.manager.device_revoked(device_id)


class FlJobManager:
    """Runs queued FL jobs on one worker thread of this process (one federation at a time)."""

    def __init__(
        self,
        settings: ControllerSettings,
        sessions: sessionmaker[Session],
        registry: Registry,
        chain: ChainBackend,
        fleet: Fleet,
        commands: Commands,
        engine_factory: Callable[[], FederationEngine] | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.registry = registry
        self.chain = chain
        self.fleet = fleet
        self.commands = commands
        self._engine_factory = engine_factory
        self._engine: FederationEngine | None = None
        self._engines: dict[str, FederationEngine] = {}  # engines other jobs named (engine_for)
        self.root = settings.data_dir / "fl-jobs"
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self._cancels: dict[str, threading.Event] = {}
        self._lock = threading.RLock()
        self._listener = _FleetListener(self)
        fleet.events.subscribe(self._listener)
        self.audit = AuditTrail(sessions, chain)  # every round on chain (controller/federation/audit.py)
        self.replica_id = new_replica_id(settings)
        self.claims = JobClaims(sessions, FlJob, self.replica_id)

    # ---------------------------------------------------------------- lifecycle
    @property
    def engine(self) -> FederationEngine:
        """The engine (built at first use; EngineUnavailable -> 503)."""
        with self._lock:
            if self._engine is None:
                if self._engine_factory is not None:
                    self._engine = self._engine_factory()
                else:
                    from controller.federation.factory import make_federation_engine

                    self._engine = make_federation_engine(self.settings, self.fleet.ca)
            return self._engine

    def start(self) -> None:
        """Fail FL jobs a stopped controller left running, then start the worker."""
        self.recover()
        for i in range(self.settings.fl_workers):
            t = threading.Thread(target=self._worker, name=f"fedge-fl-job-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        self._threads.append(self.claims.start_heartbeat(self._stop, self.recover, "fl-job"))

    def stop(self, timeout: float = 15.0) -> None:
        """Stop claiming jobs, cancel the ones running here, stop the engine."""
        self._stop.set()
        self._wake.set()
        with self._lock:
            for ev in self._cancels.values():
                ev.set()
        for t in self._threads:
            t.join(timeout)
        self.fleet.events.unsubscribe(self._listener)
        with self._lock:
            if self._engine is not None:
                self._engine.close()
            for other in self._engines.values():
                other.close()

    def recover(self) -> int:
        """Mark FL jobs left ``running`` by a replica that went quiet as failed (their engine run ended with
        that controller); jobs a live replica runs stay as they are."""
        with self.sessions.begin() as s:
            stale = self.claims.stale(s)
            for job in stale:
                run = f" (Flower run {job.run_id})" if job.run_id else ""
                job.state = JobState.FAILED.value
                job.error = (
                    f"the controller stopped while the FL job was running{run}; its rounds so far are "
                    "kept, no model was registered: start the job again"
                )
                job.finished_at = utcnow()
                self._revoke_token(s, job)
        if stale:
            log.warning("marked %d interrupted FL job(s) as failed", len(stale))
        return len(stale)

    # ---------------------------------------------------------------- submit
    def submit(self, req: FlJobIn, created_by: str) -> tuple[FlJob, list[str]]:
        """Check the whole request, then queue it; (job, chosen device ids)."""
        from controller.federation.factory import ENGINE_NAMES

        if req.engine == "nvflare":
            from controller.federation.nvflare import check_job

            refused = check_job(req)
            if refused is not None:
                raise Unprocessable(refused[1], field=refused[0])
        if req.engine not in ENGINE_NAMES:
            raise Unprocessable(
                f"engine {req.engine!r} is not available yet (available: {', '.join(ENGINE_NAMES)})",
                field="engine",
            )
        if self.settings.fl_engine == "none":
            raise Unprocessable("federated learning is off on this controller (FEDGE_FL_ENGINE=none)",
                                field="engine")  # fmt: skip
        model = self.registry.get_model(req.model.model_id)
        start = self._start_version(req) if req.model.version else None
        network = self._network(req, model, start)
        if start is not None:
            self._check_start_params(start, network, req.seed)
        devices = self._eligible(req)
        min_clients = self._min_clients(req, len(devices))
        strategy = self._strategy(req, min_clients)
        dataset, input_shape = self._data(req, model)
        if req.algorithm == "fedpate":  # engine, privacy, public set (controller/federation/pate.py)
            from controller.federation.pate import check_pate_job

            check_pate_job(req, input_shape)
        privacy = req.privacy.model_dump(mode="json", exclude_none=True)
        if req.privacy.secure_aggregation is not None:  # SecAgg+: resolved against the devices and strategy
            from controller.federation.secagg import SecAggConfigError, job_settings

            try:
                privacy["secure_aggregation"] = job_settings(req, min_clients, len(devices))
            except SecAggConfigError as exc:
                raise Unprocessable(str(exc), field=exc.field) from exc
        if req.privacy.dp is not None:
            self._check_budgets(devices, dataset, req.privacy.dp.epsilon)
        spec = req.model_dump(mode="json")
        spec["data"] = {**spec["data"], "dataset": dataset, "input_shape": input_shape}
        spec["model"]["network"] = network
        with self.sessions.begin() as s:
            job = FlJob(
                state=JobState.QUEUED.value,
                engine=req.engine,
                model_id=model.id,
                start_version=start.version if start else None,
                network=network,
                rounds=req.rounds,
                min_clients=min_clients,
                strategy=strategy,
                privacy=privacy,
                spec=spec,
                rounds_completed=0,
                created_by=created_by,
            )
            s.add(job)
            s.flush()
            for device in devices:
                s.add(FlParticipant(job_id=job.id, device_id=device.id, state=SELECTED))
        self._wake.set()
        return job, [d.id for d in devices]

    def _start_version(self, req: FlJobIn) -> ModelVersion:
        assert req.model.version is not None
        mv = self.registry.resolve_version(req.model.model_id, req.model.version)
        if mv.kind != "trained" or not (mv.filename or "").endswith(".pt2"):
            raise Unprocessable(
                f"model {mv.model_id} v{mv.version} is a {mv.kind} artifact ({mv.filename}); a job starts "
                "from a trained torch.export program (model.pt2, e.g. an earlier FL result)",
                field="model.version",
            )
        return mv

    def _network(self, req: FlJobIn, model: Model, start: ModelVersion | None) -> str:
        from edge_agent.learning.models import ModelError, resolve_factory

        hyper = (model.training or {}).get("hyperparameters") or {}
        candidates = [
            req.model.network,
            (start.descriptor or {}).get("network") if start is not None else None,
            hyper.get("network") if isinstance(hyper, dict) else None,
        ]
        network = next((str(c) for c in candidates if c), None)
        if network is None:
            raise Unprocessable(
                "name the network the devices train: model.network (built in: digits-linear, digits-mlp, "
                "digits-cnn; or module:function)",
                field="model.network",
            )
        try:
            resolve_factory(network)(req.seed)
        except ModelError as exc:
            raise Unprocessable(str(exc), field="model.network") from exc
        return network

    def _check_start_params(self, mv: ModelVersion, network: str, seed: int) -> None:
        from controller.federation.artifacts import ArtifactError, check_params, read_program_params

        path = self.root / f"start-check-{mv.id}.pt2"
        try:
            self._fetch_version(mv, path)
            check_params(network, seed, read_program_params(path))
        except ArtifactError as exc:
            raise Unprocessable(f"model {mv.model_id} v{mv.version}: {exc}", field="model.version") from exc
        finally:
            path.unlink(missing_ok=True)

    def _eligible(self, req: FlJobIn) -> list[Device]:
        chosen: dict[str, Device] = {}
        with self.sessions() as s:
            for device_id in req.participants.device_ids or []:
                device = s.get(Device, device_id)
                if device is None:
                    raise Unprocessable(
                        f"device {device_id} is not enrolled", field="participants.device_ids"
                    )
                if device.status != ACTIVE:
                    raise Unprocessable(f"device {device_id} is revoked", field="participants.device_ids")
                chosen[device.id] = device
            if req.participants.selector:
                selector = req.participants.selector
                for device in s.scalars(
                    select(Device).where(Device.status == ACTIVE).order_by(Device.enrolled_at)
                ):
                    if all(str(device.labels.get(k)) == v for k, v in selector.items()):
                        chosen.setdefault(device.id, device)
        if not chosen:
            raise Unprocessable("no active device matches participants (device_ids / selector)",
                                field="participants")  # fmt: skip
        return list(chosen.values())

    @staticmethod
    def _min_clients(req: FlJobIn, eligible: int) -> int:
        wanted = req.min_clients if req.min_clients is not None else min(DEFAULT_MIN_CLIENTS, eligible)
        if req.min_fraction is not None:
            wanted = max(wanted, math.ceil(req.min_fraction * eligible))
        if wanted > eligible:
            field = (
                "min_clients"
                if req.min_clients is not None and req.min_clients > eligible
                else "min_fraction"
            )
            raise Unprocessable(
                f"the job needs {wanted} devices per round but only {eligible} eligible device(s) match "
                "participants",
                field=field,
                eligible=eligible,
            )
        return wanted

    @staticmethod
    def _strategy(req: FlJobIn, min_clients: int) -> dict[str, Any]:
        from controller.federation.strategies import StrategySpecError, build_strategy, parse_spec

        name = req.strategy.name.strip().lower()
        params: dict[str, Any] = dict(req.strategy.params)
        if name == "fedprox" and "mu" in params:
            params["proximal_mu"] = params.pop("mu")
        spec: dict[str, Any] = {"name": name, **params}
        central = req.privacy.central_dp
        if central is not None:
            dp = central.model_dump(exclude_none=True)
            dp.setdefault("num_sampled_clients", min_clients)
            spec["central_dp"] = dp
        try:
            checked = parse_spec(spec)
            build_strategy(
                checked,
                min_available_nodes=min_clients,
                min_train_nodes=min_clients,
                min_evaluate_nodes=min_clients,
            )
        except StrategySpecError as exc:
            field = "privacy.central_dp" if str(exc).startswith("central_dp") else "strategy"
            raise Unprocessable(f"strategy: {exc}", field=field) from exc
        return spec

    def _data(self, req: FlJobIn, model: Model) -> tuple[str, list[int | None]]:
        ds = self.registry.get_dataset(model.dataset_id)
        dataset = req.data.dataset or ds.name or ds.id
        shape = req.data.input_shape or _input_shape(ds.samples_dimension)
        if not shape or shape[0] is not None or any(d is None or d < 1 for d in shape[1:]):
            raise Unprocessable(
                f"give data.input_shape like [null, 1, 8, 8] (dataset {ds.id} has samples_dimension "
                f"{ds.samples_dimension!r})",
                field="data.input_shape",
            )
        return dataset, shape

    def _check_budgets(self, devices: list[Device], dataset: str, planned: float) -> None:
        ids = [d.id for d in devices]
        with self.sessions() as s:
            rows = s.scalars(
                select(DevicePrivacy).where(
                    DevicePrivacy.device_id.in_(ids), DevicePrivacy.dataset == dataset
                )
            ).all()
        short = [r for r in rows if r.budget_remaining is not None and r.budget_remaining < planned]
        if short:
            first = short[0]
            more = f" (and {len(short) - 1} more)" if len(short) > 1 else ""
            raise Unprocessable(
                f"device {first.device_id} has epsilon {first.budget_remaining:.4g} left on dataset "
                f"{dataset!r} (as it last reported, {first.updated_at.isoformat()}); the job plans "
                f"{planned:.4g} per device{more}",
                field="privacy.dp.epsilon",
                devices=[r.device_id for r in short],
            )

    # ---------------------------------------------------------------- reads
    def get(self, job_id: str) -> FlJob:
        with self.sessions() as s:
            job = s.get(FlJob, job_id)
            if job is None:
                raise NotFound(f"FL job {job_id} not found")
            return job

    def list_jobs(
        self, limit: int, offset: int, *, model_id: str | None = None, state: str | None = None
    ) -> tuple[list[FlJob], int]:
        with self.sessions() as s:
            q = select(FlJob)
            if model_id:
                q = q.where(FlJob.model_id == model_id)
            if state:
                q = q.where(FlJob.state == state)
            total = s.scalar(select(func.count()).select_from(q.subquery())) or 0
            rows = s.scalars(q.order_by(FlJob.created_at.desc(), FlJob.id).limit(limit).offset(offset)).all()
            return list(rows), total

    def participants(self, job_ids: list[str]) -> dict[str, list[FlParticipant]]:
        out: dict[str, list[FlParticipant]] = {j: [] for j in job_ids}
        with self.sessions() as s:
            for p in s.scalars(
                select(FlParticipant)
                .where(FlParticipant.job_id.in_(job_ids))
                .order_by(FlParticipant.device_id)
            ):
                out[p.job_id].append(p)
        return out

    def rounds(self, job_ids: list[str]) -> dict[str, list[FlRound]]:
        out: dict[str, list[FlRound]] = {j: [] for j in job_ids}
        with self.sessions() as s:
            for r in s.scalars(
                select(FlRound)
                .where(FlRound.job_id.in_(job_ids))
                .order_by(FlRound.round, FlRound.kind.desc())
            ):
                out[r.job_id].append(r)
        return out

    def device_privacy(self, device_id: str) -> tuple[list[DevicePrivacy], list[tuple[FlJob, FlParticipant]]]:
        """The mirror's rows for a device and the FL jobs it was part of (newest first)."""
        self.fleet.get(device_id)
        with self.sessions() as s:
            ledgers = list(
                s.scalars(
                    select(DevicePrivacy)
                    .where(DevicePrivacy.device_id == device_id)
                    .order_by(DevicePrivacy.dataset)
                )
            )
            jobs = [
                (job, part)
                for part, job in s.execute(
                    select(FlParticipant, FlJob)
                    .join(FlJob, FlJob.id == FlParticipant.job_id)
                    .where(FlParticipant.device_id == device_id)
                    .order_by(FlJob.created_at.desc())
                ).tuples()
            ]
        return ledgers, jobs

    # ---------------------------------------------------------------- cancel
    def cancel(self, job_id: str) -> FlJob:
        request_cancel(self.sessions, FlJob, job_id, "FL job", self._cancels, self._lock)
        return self.get(job_id)

    # ---------------------------------------------------------------- reports
    def receive_report(
        self, job_id: str, caller: Principal, report: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """A report of the job's ServerApp (its own token only): stored, and handed to the engine run. A train
        report with an audit is answered with the round's record as read back from the chain."""
        if caller.role is not Role.JOB or caller.subject != report_subject(job_id):
            raise Forbidden(f"only FL job {job_id}'s own credential may report its rounds")
        job = self.get(job_id)
        if job.state != JobState.RUNNING.value:
            raise Conflict(f"FL job {job_id} is {job.state}, not running")
        engine = self._engine
        if engine is None or not engine.deliver(job_id, report):
            self.record_report(job_id, report)  # not running in this process: store it anyway
        return self.audit.confirmation(job_id, report)

    def record_report(self, job_id: str, report: Mapping[str, Any]) -> None:
        """Store one report (round metrics, participants, privacy mirror; the run summary)."""
        kind = report.get("type")
        if kind == "round":
            self._record_round(job_id, report)
            self._audit_round(job_id, report)
        elif kind == "finished":
            summary = {
                "final_metrics": report.get("final_metrics") or {},
                "server_seconds": report.get("seconds"),
                "flower_run_id": report.get("run_id"),
            }
            with self.sessions.begin() as s:
                job = s.get(FlJob, job_id)
                if job is not None:
                    job.summary = {**(job.summary or {}), **summary}
        elif kind == "failed":
            with self.sessions.begin() as s:
                job = s.get(FlJob, job_id)
                if job is not None:
                    job.summary = {**(job.summary or {}), "server_failure": str(report.get("reason"))[:4000]}

    def _record_round(self, job_id: str, report: Mapping[str, Any]) -> None:
        phase = str(report.get("kind"))
        if phase not in ("train", "evaluate"):
            raise Unprocessable(f"a round report's kind is train or evaluate, not {phase!r}", field="kind")
        try:
            server_round = int(report["round"])
        except (KeyError, TypeError, ValueError) as exc:
            raise Unprocessable("a round report needs an integer round", field="round") from exc
        with self.sessions.begin() as s:
            job = s.get(FlJob, job_id)
            if job is None:
                raise NotFound(f"FL job {job_id} not found")
            parts = {
                p.node_id: p for p in s.scalars(select(FlParticipant).where(FlParticipant.job_id == job_id))
            }

            def device(node: Any) -> str | None:
                part = parts.get(str(node))
                return part.device_id if part is not None else None

            clients = [c for c in report.get("clients") or [] if isinstance(c, dict)]
            replied = {str(c.get("node_id")) for c in clients}
            refused = {str(n) for n in report.get("budget_refused") or []}
            rejected = [r for r in report.get("rejected") or [] if isinstance(r, dict)]
            rejected_nodes = {str(r.get("node_id")) for r in rejected}
            stragglers: list[str] = []
            if phase == "train":
                for node, part in parts.items():
                    if node is None or part.state in (EXCLUDED, REVOKED, SKIPPED, SELECTED):
                        continue
                    if node not in replied | refused | rejected_nodes:
                        stragglers.append(part.device_id)
            now = utcnow()
            dataset = str((job.spec.get("data") or {}).get("dataset") or "default")
            for c in clients if phase == "train" else []:
                trained = parts.get(str(c.get("node_id")))
                if trained is None:
                    continue
                metrics = c.get("metrics") or {}
                trained.rounds_trained += 1
                trained.state = TRAINED
                trained.updated_at = now
                delta = metrics.get(ReplyKey.DP_DELTA)
                if isinstance(delta, int | float) and math.isfinite(delta) and delta > 0:
                    trained.epsilon = float(metrics.get(ReplyKey.DP_EPSILON) or 0.0)
                    trained.budget_remaining = float(metrics.get(ReplyKey.DP_BUDGET_REMAINING) or 0.0)
                    trained.delta = float(delta)
                    self._mirror(s, trained.device_id, dataset, job_id, trained, refused=False)
            for node in refused:
                excluded = parts.get(node)
                if excluded is not None:
                    excluded.budget_refusals += 1
                    excluded.state = EXCLUDED
                    excluded.updated_at = now
                    self._mirror(s, excluded.device_id, dataset, job_id, excluded, refused=True)
            for node in rejected_nodes:
                bad = parts.get(node)
                if bad is not None:
                    bad.rejections += 1
            row = s.scalar(
                select(FlRound).where(
                    FlRound.job_id == job_id, FlRound.round == server_round, FlRound.kind == phase
                )
            )
            if row is None:
                row = FlRound(job_id=job_id, round=server_round, kind=phase)
                s.add(row)
            row.metrics = {k: float(v) for k, v in (report.get("metrics") or {}).items() if _finite(v)}
            row.participants = [d for d in (device(c.get("node_id")) for c in clients) if d]
            row.stragglers = sorted(stragglers)
            row.budget_refused = sorted(d for d in (device(n) for n in refused) if d)
            row.rejected = [
                {"device_id": device(r.get("node_id")), "node_id": str(r.get("node_id")),
                 "reason": str(r.get("reason"))[:1000]}
                for r in rejected
            ]  # fmt: skip
            row.failures = int(report.get("failures") or 0)
            row.bytes_sent = int(report.get("bytes_sent") or 0)
            row.bytes_received = int(report.get("bytes_received") or 0)
            row.seconds = float(report.get("seconds") or 0.0)
            row.clients = [
                {"device_id": device(c.get("node_id")), "node_id": str(c.get("node_id")),
                 "metrics": {k: float(v) for k, v in (c.get("metrics") or {}).items() if _finite(v)}}
                for c in clients
            ]  # fmt: skip
            row.received_at = now
            if phase == "evaluate":  # a round is complete once its new global model was evaluated
                job.rounds_completed = max(job.rounds_completed, server_round)

    def _audit_round(self, job_id: str, report: Mapping[str, Any]) -> None:
        """The round's Merkle root on chain (train), or devices disputing it (evaluate)."""
        audit = report.get("audit")
        if not isinstance(audit, Mapping):
            return
        if report.get("kind") == "train":
            self.audit.record_round(job_id, int(report["round"]), audit)
        elif isinstance(audit.get("refused"), list):
            self.audit.record_disputes(job_id, int(report["round"]), audit["refused"])

    @staticmethod
    def _mirror(
        s: Session, device_id: str, dataset: str, job_id: str, part: FlParticipant, *, refused: bool
    ) -> None:
        row = s.scalar(
            select(DevicePrivacy).where(
                DevicePrivacy.device_id == device_id, DevicePrivacy.dataset == dataset
            )
        )
        if row is None:
            row = DevicePrivacy(device_id=device_id, dataset=dataset, epsilon_spent=0.0, rounds=0, refusals=0)
            s.add(row)
        if refused:
            row.refusals = (row.refusals or 0) + 1
        else:
            row.epsilon_spent = float(part.epsilon or 0.0)
            row.budget_remaining = part.budget_remaining
            row.delta = part.delta
            row.rounds = (row.rounds or 0) + 1
        row.last_job_id = job_id
        row.updated_at = utcnow()

    # ---------------------------------------------------------------- revocation
    def device_revoked(self, device_id: str) -> None:
        """Fleet listener: unregister the device's node (now if the engine runs, else at its next start)
        and drop it from running jobs."""
        with self.sessions.begin() as s:
            s.execute(
                update(FlParticipant)
                .where(
                    FlParticipant.device_id == device_id,
                    FlParticipant.job_id.in_(
                        select(FlJob.id).where(
                            FlJob.state.in_([JobState.QUEUED.value, JobState.RUNNING.value])
                        )
                    ),
                )
                .values(state=REVOKED, updated_at=utcnow())
            )
        engine = self._engine
        if engine is not None:
            with contextlib.suppress(EngineError):
                engine.health()
                self._unregister_revoked(engine, [device_id])

    def _unregister_revoked(self, engine: FederationEngine, device_ids: list[str] | None = None) -> int:
        """Unregister the nodes of revoked devices that are still registered on this engine."""
        with self.sessions() as s:
            q = (
                select(FlNode)
                .join(Device, Device.id == FlNode.device_id)
                .where(
                    FlNode.state == REGISTERED, Device.status != ACTIVE, FlNode.superlink == engine.identity
                )
            )
            if device_ids is not None:
                q = q.where(FlNode.device_id.in_(device_ids))
            rows = list(s.scalars(q))
        done = 0
        for row in rows:
            try:
                engine.unregister_node(int(row.node_id))
            except EngineError as exc:
                log.error(
                    "could not unregister node %s of revoked device %s: %s", row.node_id, row.device_id, exc
                )
                continue
            with self.sessions.begin() as s:
                s.execute(
                    update(FlNode)
                    .where(FlNode.device_id == row.device_id)
                    .values(state=UNREGISTERED, unregistered_at=utcnow())
                )
            log.info("unregistered node %s of revoked device %s", row.node_id, row.device_id)
            done += 1
        return done

    def ready_engine(self) -> FederationEngine:
        """The engine, started, with revoked devices' nodes unregistered."""
        engine = self.engine
        engine.start()
        self._unregister_revoked(engine)
        return engine

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
                log.exception("FL job %s crashed the worker", job.id)
                self._finish(
                    job.id, JobState.FAILED, error="internal error while running the FL job; see logs"
                )

    def _claim(self) -> FlJob | None:
        job_id = self.claims.claim_next()
        return None if job_id is None else self.get(job_id)

    def _finish(self, job_id: str, state: JobState, *, error: str | None = None, **values: Any) -> bool:
        """End a job this replica runs; False (outcome dropped) when another replica failed it meanwhile."""
        with self.sessions.begin() as s:
            if not self.claims.finish(s, job_id, {**values, "state": state.value, "error": error}):
                return False
            job = s.get(FlJob, job_id)
            if job is not None:
                self._revoke_token(s, job)
        return True

    @staticmethod
    def _revoke_token(s: Session, job: FlJob) -> None:
        if job.token_id:
            s.execute(update(ApiToken).where(ApiToken.id == job.token_id).values(revoked_at=utcnow()))

    def workdir(self, job_id: str) -> Path:
        return self.root / job_id

    def _run(self, job: FlJob) -> None:
        workdir = self.workdir(job.id)
        cancel = threading.Event()
        with self._lock:
            self._cancels[job.id] = cancel
        watcher = threading.Thread(target=self._watch_cancel, args=(job.id, cancel), daemon=True)
        watcher.start()
        state = JobState.FAILED  # what the finally clause records unless a branch below decides
        error_text: str | None = "internal error in the FL job; see the logs"
        values: dict[str, Any] = {}
        try:
            engine = self._ready(job)
            spec = self._prepare(job, workdir, engine, cancel)
            outcome = engine.run(spec, cancel, lambda report: self.record_report(job.id, report))
            with self.sessions.begin() as s:
                s.execute(update(FlJob).where(FlJob.id == job.id).values(run_id=outcome.run_id))
            if outcome.state is JobState.CANCELLED or (
                cancel.is_set() and outcome.state is not JobState.SUCCEEDED
            ):
                raise _Cancelled()
            if outcome.state is not JobState.SUCCEEDED:
                raise JobFailed(outcome.reason or f"the federation ended {outcome.state}")
            assert outcome.output_path is not None
            if not self.claims.still_ours(job.id):  # failed by another replica meanwhile: publish nothing
                raise JobFailed("this FL job was failed by another controller replica while it ran here")
            values = self._publish(self.get(job.id), outcome.output_path, workdir, dict(outcome.summary))
            state, error_text = JobState.SUCCEEDED, None
            log.info("FL job %s succeeded: model %s v%s", job.id, job.model_id, values["result_version"])
        except _Cancelled:
            state, error_text = JobState.CANCELLED, "cancelled"
        except JobFailed as exc:
            log.warning("FL job %s failed: %s", job.id, exc)
            state, error_text = JobState.FAILED, str(exc)
        except EngineError as exc:
            log.warning("FL job %s: the %s engine failed: %s", job.id, job.engine, exc)
            state, error_text = JobState.FAILED, f"the {job.engine} engine failed: {exc}"
        finally:  # devices dismissed before the job shows as ended
            cancel.set()
            with self._lock:
                self._cancels.pop(job.id, None)
            self._dismiss(job.id)
            with contextlib.suppress(OSError):
                shutil.rmtree(workdir / "input")
            self._finish(job.id, state, error=error_text, **values)

    def _dismiss(self, job_id: str) -> None:
        """Tell every invited device the job is over (``fl-leave``): its SuperNode stops once it is in no
        job any more (``leave_after`` stops it anyway if this command is lost)."""
        for part in self.participants([job_id])[job_id]:
            if part.command_id is None or part.state in (REVOKED, SKIPPED):
                continue
            try:
                self.commands.create_fl_leave(part.device_id, FlLeave(job_id=job_id), f"fl-job:{job_id}")
            except ProblemError as exc:
                log.info("FL job %s: no fl-leave for device %s: %s", job_id, part.device_id, exc.detail)

    def _watch_cancel(self, job_id: str, cancel: threading.Event) -> None:
        """Honour cancel requests made on any replica, and stop a run whose job is no longer ours (failed by
        another replica while our heartbeat had stalled)."""
        while not cancel.wait(1.0):
            if self.claims.must_stop(job_id):
                cancel.set()

    def engine_for(self, name: str) -> FederationEngine:
        """The engine a job names: the default one (Flower, or the test's factory) or, for ``nvflare``,
        one built by the factory at first use."""
        if name == "flower" or (self._engine_factory is not None and self.engine.name == name):
            return self.engine
        with self._lock:
            if name not in self._engines:
                from controller.federation.factory import make_federation_engine

                self._engines[name] = make_federation_engine(self.settings, self.fleet.ca, name=name)
            return self._engines[name]

    def _ready(self, job: FlJob) -> FederationEngine:
        try:
            if job.engine != "flower":
                engine = self.engine_for(job.engine)
                engine.start()
                return engine
            return self.ready_engine()
        except EngineError as exc:
            raise JobFailed(f"the {job.engine} engine is not available: {exc}") from exc

    # ---------------------------------------------------------------- steps
    def _prepare(
        self, job: FlJob, workdir: Path, engine: FederationEngine, cancel: threading.Event
    ) -> FederationSpec:
        """Initial parameters, report credential, node registrations and fl-join invitations."""
        (workdir / "input").mkdir(parents=True, exist_ok=True)
        (workdir / "output").mkdir(parents=True, exist_ok=True)
        spec = job.spec
        initial: Path | None = None
        if job.start_version is not None:
            initial = self._initial_params(job, workdir)
        endpoint = engine.fleet_endpoint() if engine.deploys_to_devices else None
        timeout_s = float(self.settings.fl_job_timeout_seconds)
        with self.sessions.begin() as s:
            plaintext, token = tokens.mint(
                s,
                name=f"fl-job-{job.id}",
                role=Role.JOB,
                subject=report_subject(job.id),
                ttl_seconds=int(timeout_s) + 600,
            )
            s.execute(update(FlJob).where(FlJob.id == job.id).values(token_id=token.id))
        dp = (job.privacy or {}).get("dp")
        plan = FlPrivacyPlan(
            local_dp=dp is not None,
            target_epsilon=dp["epsilon"] if dp else None,
            delta=dp["delta"] if dp else None,
            max_grad_norm=dp["max_grad_norm"] if dp else None,
            accountant=dp["accountant"] if dp else None,
            central_dp=(job.privacy or {}).get("central_dp") is not None,
        )
        data = spec.get("data") or {}
        leave_after = (utcnow() + dt.timedelta(seconds=timeout_s)).isoformat()
        nodes: list[int] = []
        for part in self.participants([job.id])[job.id]:
            if cancel.is_set():
                raise _Cancelled()
            if engine.deploys_to_devices:
                node = self._invite(job, part, engine, endpoint, plan, data, leave_after)
            else:
                node = self._enlist(part, engine)
            if node is not None:
                nodes.append(node)
        if len(nodes) < job.min_clients:
            raise JobFailed(
                f"only {len(nodes)} participant(s) could be invited; the job needs {job.min_clients}"
            )
        return FederationSpec(
            job_id=job.id,
            rounds=job.rounds,
            min_clients=job.min_clients,
            strategy=job.strategy,
            network=job.network,
            workdir=workdir,
            output_path=workdir / "output" / "final.npz",
            report_url=f"{self.settings.fl_report_base_url}/v1/fl/jobs/{job.id}/reports",
            report_token=plaintext,
            participant_nodes=tuple(nodes),
            seed=int(spec.get("seed", 0)),
            local_epochs=int(spec.get("local_epochs", 1)),
            batch_size=int(spec.get("batch_size", 32)),
            lr=float(spec.get("lr", 0.1)),
            momentum=float(spec.get("momentum", 0.0)),
            dp_target_epsilon=float(dp["epsilon"]) if dp else 0.0,
            dp_delta=float(dp["delta"]) if dp else 1e-5,
            dp_max_grad_norm=float(dp["max_grad_norm"]) if dp else 1.0,
            secure_aggregation=(job.privacy or {}).get("secure_aggregation"),
            he=_he_settings(job.privacy),
            algorithm=str(spec.get("algorithm") or "fedavg"),
            pate=_pate_settings(spec) if spec.get("algorithm") == "fedpate" else None,
            initial_path=initial,
            round_timeout_s=float(spec.get("round_timeout", 600.0)),
            node_wait_s=float(self.settings.fl_node_wait_seconds),
            timeout_s=timeout_s,
            participant_devices=tuple(
                p.device_id
                for p in self.participants([job.id])[job.id]
                if p.node_id is not None and int(p.node_id) in nodes
            ),
            dataset_path=None if engine.deploys_to_devices else self._stage_dataset(job, workdir),
        )

    def _enlist(self, part: FlParticipant, engine: FederationEngine) -> int | None:
        """A participant of an engine that runs the clients itself (nvflare): no key registration, no
        ``fl-join``; its client id (None: revoked)."""
        if part.state == REVOKED or self.fleet.get(part.device_id).status != ACTIVE:
            self._participant(part.id, state=REVOKED)
            return None
        node_id = engine.register_node(part.device_id, b"")
        self._participant(part.id, state=INVITED, node_id=str(node_id))
        return node_id

    def _stage_dataset(self, job: FlJob, workdir: Path) -> Path:
        """The model's registered dataset, streamed and SHA-256 checked against its chain record, for an
        engine whose clients train on the controller host."""
        model = self.registry.get_model(job.model_id)
        ds = self.registry.get_dataset(model.dataset_id)
        chain_sha, _ = self.registry.chain_dataset_hash(ds)
        path = workdir / "input" / "dataset.npz"
        try:
            with open(path, "wb") as fh:
                what = f"dataset {ds.id}"
                for chunk in self.registry.verified_chunks(ds.bucket, ds.object_key, chain_sha, what):
                    fh.write(chunk)
        except (ProblemError, IntegrityError) as exc:
            path.unlink(missing_ok=True)
            detail = exc.detail if isinstance(exc, ProblemError) else str(exc)
            raise JobFailed(f"the dataset failed its chain check: {detail}") from exc
        return path

    def _invite(
        self,
        job: FlJob,
        part: FlParticipant,
        engine: FederationEngine,
        endpoint: Any,
        plan: FlPrivacyPlan,
        data: Mapping[str, Any],
        leave_after: str,
    ) -> int | None:
        """Register the device's key and send it ``fl-join``; its node id (None: not invited)."""
        from controller.federation.flower import public_key_pem

        if part.state == REVOKED:
            return None
        device = self.fleet.get(part.device_id)
        if device.status != ACTIVE:
            self._participant(part.id, state=REVOKED)
            return None
        pem = public_key_pem(device.certificate)
        try:
            node_id = engine.register_node(device.id, pem)
        except EngineError as exc:
            log.warning("FL job %s: cannot register device %s: %s", job.id, device.id, exc)
            self._participant(part.id, state=SKIPPED)
            return None
        with self.sessions.begin() as s:
            row = s.get(FlNode, device.id)
            if row is None:
                row = FlNode(device_id=device.id)
                s.add(row)
            row.superlink, row.node_id, row.state = engine.identity, str(node_id), REGISTERED
            row.public_key_sha256 = hashlib.sha256(pem).hexdigest()
            row.registered_at, row.unregistered_at = utcnow(), None
        params = FlJoin(
            job_id=job.id,
            engine="flower",
            superlink=endpoint.address,
            tls=FlTls(root_certificate=endpoint.root_certificate, server_name=endpoint.server_name),
            node_auth=True,
            node_id=node_id,
            network=job.network,
            rounds=job.rounds,
            local_epochs=int(job.spec.get("local_epochs", 1)),
            round_timeout_s=float(job.spec.get("round_timeout", 600.0)),
            data=FlData(
                dataset=str(data.get("dataset") or "default"),
                input_shape=list(data.get("input_shape") or []),
                num_classes=data.get("num_classes"),
            ),
            privacy=plan,
            leave_after=leave_after,
        )
        try:
            command = self.commands.create_fl_join(device.id, params, created_by=f"fl-job:{job.id}")
        except ProblemError as exc:
            log.warning("FL job %s: cannot invite device %s: %s", job.id, device.id, exc.detail)
            self._participant(part.id, state=SKIPPED)
            return None
        with self.sessions() as s:
            mirror = s.scalar(
                select(DevicePrivacy.epsilon_spent).where(
                    DevicePrivacy.device_id == device.id, DevicePrivacy.dataset == params.data.dataset
                )
            )
        self._participant(
            part.id, state=INVITED, node_id=str(node_id), command_id=command.id, epsilon_before=mirror
        )
        return node_id

    def _participant(self, part_id: str, **values: Any) -> None:
        with self.sessions.begin() as s:
            s.execute(
                update(FlParticipant).where(FlParticipant.id == part_id).values(updated_at=utcnow(), **values)
            )

    def _fetch_version(self, mv: ModelVersion, path: Path) -> None:
        chain_sha, _ = self.registry.chain_version_hash(mv)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(path, "wb") as fh:
                for chunk in self.registry.verified_chunks(
                    mv.bucket, mv.object_key, chain_sha, f"model {mv.model_id} v{mv.version}"
                ):
                    fh.write(chunk)
        except (ProblemError, IntegrityError) as exc:
            path.unlink(missing_ok=True)
            detail = exc.detail if isinstance(exc, ProblemError) else str(exc)
            raise JobFailed(f"the start version failed its chain check: {detail}") from exc

    def _initial_params(self, job: FlJob, workdir: Path) -> Path:
        import numpy as np

        from controller.federation.artifacts import ArtifactError, check_params, read_program_params

        assert job.start_version is not None
        mv = self.registry.resolve_version(job.model_id, job.start_version)
        program = workdir / "input" / ARTIFACT
        self._fetch_version(mv, program)
        try:
            params = read_program_params(program)
            check_params(job.network, int(job.spec.get("seed", 0)), params)
        except ArtifactError as exc:
            raise JobFailed(f"cannot start from model {mv.model_id} v{mv.version}: {exc}") from exc
        path = workdir / "input" / "initial.npz"
        np.savez(path, **params)  # type: ignore[arg-type]
        return path

    def _publish(self, job: FlJob, final: Path, workdir: Path, summary: dict[str, Any]) -> dict[str, Any]:
        """Final parameters -> torch.export program -> chain record of the run -> new model version."""
        from controller.chain.errors import ChainError
        from controller.federation.artifacts import ArtifactError, export_program, load_npz

        participants = self.participants([job.id])[job.id]
        contributors = sorted(p.device_id for p in participants if p.rounds_trained > 0)
        if not contributors:
            refusals = sum(p.budget_refusals for p in participants)
            raise JobFailed(
                f"no device contributed a train update ({refusals} budget refusal(s)); nothing to register"
            )
        data = job.spec.get("data") or {}
        program = workdir / "output" / ARTIFACT
        try:
            export_program(
                job.network, int(job.spec.get("seed", 0)), load_npz(final), list(data["input_shape"]), program
            )
        except ArtifactError as exc:
            raise JobFailed(f"cannot turn the final parameters into a program: {exc}") from exc
        lineage = self._final_lineage(job, final)
        sha = hashlib.sha256(program.read_bytes()).hexdigest()
        dp = (job.privacy or {}).get("dp")
        epsilons = [p.epsilon for p in participants if p.rounds_trained > 0 and p.epsilon is not None]
        # local DP: the largest epsilon a contributing device reported after the job (its whole history
        # on the dataset, so an upper bound of this job's); none reported: the plan's target
        epsilon = (max(epsilons) if epsilons else float(dp["epsilon"])) if dp else None
        delta = float(dp["delta"]) if dp else None
        strategy = str(job.strategy.get("name", "fedavg"))
        if job.spec.get("algorithm") == "fedpate":  # the labels' PATE epsilon, not a device's DP-SGD one
            from controller.federation.pate import pate_epsilon

            epsilon, delta, strategy = *pate_epsilon(summary), "fedpate"
        rounds = self._rounds_done(job.id) or job.rounds
        try:
            receipt = self.chain.record_fl_run(
                job.id,
                contributors,
                rounds,
                f"{job.engine}:{strategy}",
                bytes.fromhex(sha),
                dp_epsilon=epsilon,
                dp_delta=delta,
                he_enabled=_he_settings(job.privacy) is not None,
                model_id=job.model_id,
            )
            record = self.chain.get_fl_run(job.id)
        except ChainError as exc:
            raise JobFailed(f"could not record the FL run on chain: {exc}") from exc
        chain = {
            "run_id": record.run_id,
            "tx_hash": receipt.tx_hash,
            "block_number": receipt.block_number,
            "contract_address": record.contract_address,
            "rounds": record.rounds,
            "strategy": record.strategy,
            "participant_hashes": [h.hex() for h in record.participant_hashes],
            "participants_digest": record.participants_digest.hex(),
            "dp_epsilon": record.dp_epsilon,
            "dp_delta": record.dp_delta,
            "he_enabled": record.he_enabled,
            "final_model_hash": record.final_model_hash.hex(),
            "model_id": record.model_id,
            "recorded_at": record.recorded_at,
        }
        final_metrics = dict(summary.get("final_metrics") or {})
        descriptor = {
            "framework": "pytorch",
            "input_name": "x",
            "input_shape": list(data["input_shape"]),
            "input_dtype": "float32",
            "network": job.network,
            "seed": int(job.spec.get("seed", 0)),
            "fl_job_id": job.id,
            "fl_chain_tx": receipt.tx_hash,
            "metrics": final_metrics,
            **lineage,
        }
        if data.get("num_classes"):
            descriptor["classes"] = list(range(int(data["num_classes"])))
        try:
            row = self.registry.add_version_from_file(
                job.model_id,
                "trained",
                program,
                created_by=f"fl-job:{job.id}",
                fmt="pytorch",
                source_version=job.start_version,
                descriptor=descriptor,
            )
        except ProblemError as exc:
            raise JobFailed(f"could not store the result: {exc.detail}") from exc
        if row.sha256 != sha:
            raise JobFailed(f"the stored result's sha256 {row.sha256} differs from the recorded {sha}")
        out_summary = {
            **{k: v for k, v in json.loads(json.dumps(summary, default=str)).items() if k != "type"},
            "final_metrics": final_metrics,
            "epsilon_spent": epsilon,
            "delta": delta,
            "contributors": contributors,
        }
        with self.sessions() as s:
            stored = s.get(FlJob, job.id)
            previous = dict(stored.summary or {}) if stored is not None else {}
        return {
            "result_version": row.version,
            "result_sha256": row.sha256,
            "chain": chain,
            "summary": {**previous, **out_summary},
            "rounds_completed": rounds,
        }

    def _final_lineage(self, job: FlJob, final: Path) -> dict[str, str]:
        """The final parameters must be the last audited round's aggregate (not applicable when that is
        a ciphertext, HE); the descriptor then names their digest."""
        from controller.federation.artifacts import load_npz
        from controller.federation.round_audit import params_digest

        last = self.audit.last_aggregate(job.id)
        if last is None or audit_lineage_exempt(job):
            return {}
        digest = params_digest(load_npz(final)).hex()
        if digest != last:
            raise JobFailed(
                f"the final parameters (digest {digest}) are not the last audited aggregate {last}"
            )
        return {FINAL_AGGREGATE_KEY: digest}

    def _rounds_done(self, job_id: str) -> int:
        with self.sessions() as s:
            return int(
                s.scalar(
                    select(func.max(FlRound.round)).where(FlRound.job_id == job_id, FlRound.kind == "train")
                )
                or 0
            )


def _pate_settings(spec: Mapping[str, Any]) -> dict[str, Any]:
    from controller.federation.pate import pate_settings

    return pate_settings(spec)


def engine_unavailable(exc: EngineUnavailable) -> ServiceUnavailable:
    return ServiceUnavailable(str(exc), backend="federation")


def _he_settings(privacy: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The run config's HE settings of a job's ``privacy.he`` (None: HE off; controller.federation.he)."""
    he = (privacy or {}).get("he") or {}
    return {k: v for k, v in he.items() if k != "enabled"} if he.get("enabled", False) else None
