"""Deployments: set the desired model of a set of devices, wave by wave, with a failure gate.

A wave starts when the one before it has settled (every target reported a terminal state). If more than
``max_failure_ratio`` of a wave failed, the rollout stops: waiting targets are cancelled and, with
``auto_rollback``, every device this deployment touched gets its previous desired state back.
The latest deployment of a device wins: its targets in older rollouts are marked ``superseded``.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import threading
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from controller.db.models import Deployment, DeploymentTarget, Device, utcnow
from controller.errors import Conflict, NotFound, Unprocessable
from controller.fleet.devices import ACTIVE, Fleet
from controller.fleet.references import check_reference
from fedge_protocol.status import FAILED, DeploymentStatus

log = logging.getLogger("fedge.fleet.deployments")

# A target's state: the controller's own words before and after the device's part, and in between the
# device-reported DeploymentStatus words (applying, succeeded, failed-..., rejected).
WAITING, PENDING = "waiting", "pending"
APPLYING, SUCCEEDED = DeploymentStatus.APPLYING, DeploymentStatus.SUCCEEDED
CANCELLED, SUPERSEDED, REVERTED, TIMED_OUT = "cancelled", "superseded", "rolled-back", "timed-out"
# A deployment's state: rolling until it settles; superseded when newer deployments took every target before
# anything was installed from it; cancelled by an operator.
ROLLING, DEPLOYMENT_FAILED = "rolling", "failed"
DEPLOYMENT_STATES = (ROLLING, SUCCEEDED, DEPLOYMENT_FAILED, SUPERSEDED, CANCELLED)
OPEN_STATES = (WAITING, PENDING, APPLYING)
FAILED_STATES = (*sorted(FAILED), TIMED_OUT)
"""Target states that count against a wave's failure ratio (a device that never answered included)."""
REPORTABLE = tuple(DeploymentStatus)
ONNX_KINDS = ("onnx", "quantized")


def parse_waves(strategy: str | dict[str, Any]) -> list[float]:
    """``"all-at-once"`` -> [1.0]; ``{"waves": [0.1, 1.0]}`` -> cumulative fractions ending at 1.0."""
    if strategy == "all-at-once":
        return [1.0]
    waves = strategy.get("waves") if isinstance(strategy, dict) else None
    if not isinstance(waves, list) or not waves:
        raise Unprocessable('strategy must be "all-at-once" or {"waves": [fractions...]}', field="strategy")
    fractions = [float(w) for w in waves]
    if any(not 0 < f <= 1 for f in fractions) or fractions != sorted(fractions) or fractions[-1] != 1.0:
        raise Unprocessable(
            "waves are increasing cumulative fractions in (0, 1] ending with 1.0", field="strategy.waves"
        )
    return fractions


def assign_waves(count: int, fractions: list[float]) -> list[int]:
    """The wave index of each of ``count`` targets (every wave that gets nobody is skipped)."""
    cutoffs = [max(1, math.ceil(f * count)) for f in fractions]
    return [next(i for i, c in enumerate(cutoffs) if n < c) for n in range(count)]


def _chunks(ids: list[str], size: int = 500) -> list[list[str]]:
    """``ids`` in lists of at most ``size`` (bound parameters of one ``IN (...)``)."""
    return [ids[i : i + size] for i in range(0, len(ids), size)]


@dataclass
class _Queued:
    """A status report waiting for its group commit (:meth:`Rollouts.report`)."""

    device_id: str
    report: dict[str, Any]
    done: bool = False
    error: Exception | None = None


@dataclass(frozen=True)
class DeploymentRequest:
    model_id: str
    version: int | None
    device_ids: list[str] | None
    selector: dict[str, str] | None
    strategy: str | dict[str, Any]
    max_failure_ratio: float
    auto_rollback: bool
    reference_dataset_id: str | None = None
    """The drift reference data set named in the targets' desired state (a ready, chain-recorded one)."""
    device_timeout_s: int | None = None
    """A target pending or applying longer than this becomes ``timed-out`` (None: no limit)."""
    continuous: bool = False
    """Devices enrolling later whose labels match ``selector`` join the deployment."""


class Rollouts:
    """Creates deployments and advances them as devices report."""

    def __init__(self, sessions: sessionmaker[Session], fleet: Fleet, sweep_seconds: float = 5.0) -> None:
        self.sessions = sessions
        self.fleet = fleet
        self.sweep_seconds = sweep_seconds
        self._stop_sweeper = threading.Event()
        self._sweeper: threading.Thread | None = None
        self._writer = threading.Lock()  # one status-report transaction at a time (group commit)
        self._queue_lock = threading.Lock()
        self._queued: list[_Queued] = []
        fleet.on_enrolled(self._join_continuous)

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the sweeper that times out targets whose device never answered."""
        if self._sweeper is None:
            self._stop_sweeper.clear()
            self._sweeper = threading.Thread(
                target=self._sweep_loop, name="fedge-rollout-sweeper", daemon=True
            )
            self._sweeper.start()

    def stop(self) -> None:
        self._stop_sweeper.set()
        if self._sweeper is not None:
            self._sweeper.join(10)
            self._sweeper = None

    def _sweep_loop(self) -> None:
        while not self._stop_sweeper.wait(self.sweep_seconds):
            try:
                self.sweep()
            except Exception:  # a database hiccup must not end the sweeper
                log.exception("deployment sweep failed")

    def sweep(self, now: dt.datetime | None = None) -> int:
        """Time out pending/applying targets older than their deployment's device timeout and advance those
        deployments (a timed-out target counts as a failure). Returns how many targets timed out."""
        now = now or utcnow()
        timed_out = 0
        with self.sessions.begin() as s:
            # replicas: sweep only deployments this transaction holds (FOR UPDATE, skipping those a report or
            # another replica's sweep holds now; the next sweep gets them), so a wave settles once
            mine = s.scalars(
                select(Deployment.id)
                .where(Deployment.state == ROLLING, Deployment.device_timeout_s.is_not(None))
                .order_by(Deployment.id)
                .with_for_update(skip_locked=True)
            ).all()
            rows = s.execute(
                select(DeploymentTarget, Deployment.device_timeout_s)
                .join(Deployment, Deployment.id == DeploymentTarget.deployment_id)
                .where(
                    Deployment.id.in_(mine),
                    Deployment.state == ROLLING,
                    Deployment.device_timeout_s.is_not(None),
                    DeploymentTarget.state.in_((PENDING, APPLYING)),
                )
            ).all()
            touched: set[str] = set()
            for target, timeout in rows:
                updated = target.updated_at
                if updated.tzinfo is None:
                    updated = updated.replace(tzinfo=dt.UTC)
                if timeout is None or (now - updated).total_seconds() < timeout:
                    continue
                target.state, target.updated_at = TIMED_OUT, now
                target.error = f"no report from the device within {timeout} s"
                touched.add(target.deployment_id)
                timed_out += 1
            for deployment_id in sorted(touched):
                dep = s.get(Deployment, deployment_id)
                if dep is not None:
                    self._advance(s, dep)
        if timed_out:
            log.info("deployment sweep: %d target(s) timed out", timed_out)
        self._notify(s)
        return timed_out

    def _join_continuous(self, s: Session, device: Device) -> None:
        """An enrolling device joins the newest continuous deployment whose selector its labels match."""
        for dep in s.scalars(
            select(Deployment)
            .where(Deployment.continuous.is_(True), Deployment.state.in_((ROLLING, SUCCEEDED)))
            .order_by(Deployment.created_at.desc())
        ):
            selector = dep.selector or {}
            if not selector or any(device.labels.get(k) != v for k, v in selector.items()):
                continue
            last_wave = max(len(dep.strategy.get("waves", [1.0])) - 1, 0)
            target = DeploymentTarget(
                deployment_id=dep.id, device_id=device.id, wave=last_wave, state=WAITING
            )
            s.add(target)
            if dep.state == SUCCEEDED or dep.current_wave >= last_wave:
                self._apply(s, dep, target, device)
            return

    @staticmethod
    def _changed(s: Session, device_id: str) -> None:
        s.info.setdefault("desired_changed", set()).add(device_id)

    def _notify(self, s: Session) -> None:
        changed = sorted(s.info.pop("desired_changed", set()))
        self.fleet.events.desired_changed(changed)  # after commit: listeners push over MQTT

    def create(self, req: DeploymentRequest, created_by: str) -> str:
        registry = self.fleet.registry
        mv = registry.resolve_version(req.model_id, req.version, None if req.version else "onnx")
        if mv.kind not in ONNX_KINDS and (mv.format or "").lower() != "onnx":
            raise Unprocessable(
                f"model {req.model_id} v{mv.version} is a {mv.kind} artifact, not ONNX", field="version"
            )
        sha, _ = self.fleet.chain_hash(mv)
        if sha is None:
            raise Conflict(f"model {req.model_id} v{mv.version} has no chain record; cannot deploy it")
        fractions = parse_waves(req.strategy)
        if req.reference_dataset_id is not None:
            check_reference(registry, req.reference_dataset_id)
        if not req.device_ids and not req.selector:
            raise Unprocessable("give device_ids or a selector", field="device_ids")
        if req.continuous and not req.selector:
            raise Unprocessable(
                "a continuous deployment needs a selector: devices enrolling later with its labels join it",
                field="continuous",
            )
        with self.sessions.begin() as s:
            deployment_id = self._create(s, req, created_by, mv.version, fractions)
        self._notify(s)
        return deployment_id

    def _create(
        self, s: Session, req: DeploymentRequest, created_by: str, version: int, fractions: list[float]
    ) -> str:
        devices = self._targets(s, req)
        dep = Deployment(
            model_id=req.model_id,
            version=version,
            state=ROLLING,
            strategy={"waves": fractions},
            selector=req.selector,
            max_failure_ratio=req.max_failure_ratio,
            auto_rollback=req.auto_rollback,
            current_wave=0,
            created_by=created_by,
            reference_dataset_id=req.reference_dataset_id,
            device_timeout_s=req.device_timeout_s,
            continuous=req.continuous,
        )
        s.add(dep)
        s.flush()
        device_ids = [d.id for d in devices]
        # Deployments whose open targets this one supersedes are locked first (by id), as a status report
        # locks its deployment before its target: one replica's report and another's create never advance
        # the same deployment at once, and the lock order (deployment, then target) cannot deadlock.
        touched: set[str] = set()
        for chunk in _chunks(device_ids):  # one query per chunk, not one per device
            touched.update(
                s.scalars(
                    select(DeploymentTarget.deployment_id).where(
                        DeploymentTarget.device_id.in_(chunk), DeploymentTarget.state.in_(OPEN_STATES)
                    )
                )
            )
        for chunk in _chunks(sorted(touched)):
            s.scalars(
                select(Deployment.id)
                .where(Deployment.id.in_(chunk))
                .order_by(Deployment.id)
                .with_for_update()
            ).all()
        touched = set()
        for chunk in _chunks(device_ids):  # read again under the locks: a report may have closed some
            for old in s.scalars(
                select(DeploymentTarget)
                .where(DeploymentTarget.device_id.in_(chunk), DeploymentTarget.state.in_(OPEN_STATES))
                .execution_options(populate_existing=True)
            ):
                old.state, old.updated_at = SUPERSEDED, utcnow()
                touched.add(old.deployment_id)
        s.add_all(
            DeploymentTarget(deployment_id=dep.id, device_id=device.id, wave=wave, state=WAITING)
            for device, wave in zip(devices, assign_waves(len(devices), fractions), strict=True)
        )
        s.flush()
        self._start_wave(s, dep)
        self._advance(s, dep)  # a continuous deployment may start with no device yet
        for other in sorted(touched):
            older = s.get(Deployment, other, populate_existing=True)
            if older is not None:
                self._advance(s, older)
        return dep.id

    def _targets(self, s: Session, req: DeploymentRequest) -> list[Device]:
        chosen: dict[str, Device] = {}
        wanted = list(dict.fromkeys(req.device_ids or []))
        found: dict[str, Device] = {}
        for chunk in _chunks(wanted):
            found.update((d.id, d) for d in s.scalars(select(Device).where(Device.id.in_(chunk))))
        for device_id in wanted:
            device = found.get(device_id)
            if device is None or device.status != ACTIVE:
                raise Unprocessable(f"device {device_id} is unknown or revoked", field="device_ids")
            chosen[device.id] = device
        if req.selector:
            for device in s.scalars(
                select(Device).where(Device.status == ACTIVE).order_by(Device.enrolled_at)
            ):
                if all(device.labels.get(k) == v for k, v in req.selector.items()):
                    chosen.setdefault(device.id, device)
        if not chosen and not req.continuous:
            raise Unprocessable("no active device matches device_ids / selector", field="selector")
        return list(chosen.values())

    def _wave_targets(self, s: Session, dep: Deployment, wave: int) -> list[DeploymentTarget]:
        return list(
            s.scalars(
                select(DeploymentTarget).where(
                    DeploymentTarget.deployment_id == dep.id, DeploymentTarget.wave == wave
                )
            )
        )

    @staticmethod
    def _wave_counts(s: Session, dep: Deployment, wave: int) -> dict[str, int]:
        """A wave's targets counted by state: one aggregate query (a status report does not load the wave's
        targets, so a rollout of N devices costs O(N) rows in all, not O(N^2)). The session flushes the
        reporting target's new state first (autoflush)."""
        rows = s.execute(
            select(DeploymentTarget.state, func.count())
            .where(DeploymentTarget.deployment_id == dep.id, DeploymentTarget.wave == wave)
            .group_by(DeploymentTarget.state)
        )
        return {str(state): int(n) for state, n in rows}

    def _start_wave(self, s: Session, dep: Deployment) -> None:
        for target in self._wave_targets(s, dep, dep.current_wave):
            if target.state != WAITING:
                continue
            device = s.get(Device, target.device_id)
            if device is None or device.status != ACTIVE:
                target.state, target.error = CANCELLED, "device revoked"
                continue
            self._apply(s, dep, target, device)

    def _apply(self, s: Session, dep: Deployment, target: DeploymentTarget, device: Device) -> None:
        """Give the device this deployment's model as its desired state; the target becomes pending."""
        target.previous = device.desired
        device.desired = {"model_id": dep.model_id, "version": dep.version, "deployment_id": dep.id}
        if dep.reference_dataset_id:
            device.desired["reference_dataset_id"] = dep.reference_dataset_id
        device.desired_revision += 1
        self._changed(s, device.id)
        target.state, target.updated_at = PENDING, utcnow()

    def _advance(self, s: Session, dep: Deployment) -> None:
        """Settle the current wave: stop (and roll back) on too many failures, else start the next."""
        while dep.state == ROLLING:
            by_state = self._wave_counts(s, dep, dep.current_wave)
            if any(by_state.get(state, 0) for state in OPEN_STATES):
                return
            counted = sum(n for state, n in by_state.items() if state not in (SUPERSEDED, CANCELLED))
            failed = sum(n for state, n in by_state.items() if state in FAILED_STATES)
            if counted and failed / counted > dep.max_failure_ratio:
                self._stop(s, dep, f"wave {dep.current_wave}: {failed} of {counted} devices failed")
                return
            waves = len(dep.strategy.get("waves", [1.0]))
            if dep.current_wave + 1 >= waves:
                dep.state, dep.finished_at = self._settled_state(s, dep), utcnow()
                return
            dep.current_wave += 1
            self._start_wave(s, dep)

    @staticmethod
    def _settled_state(s: Session, dep: Deployment) -> str:
        """``succeeded`` once a target installed it; ``superseded`` when newer deployments took every target
        before any did (nothing was installed from this one)."""
        states = set(
            s.scalars(select(DeploymentTarget.state).where(DeploymentTarget.deployment_id == dep.id))
        )
        if SUCCEEDED in states or not states <= {SUPERSEDED, CANCELLED} or SUPERSEDED not in states:
            return SUCCEEDED
        return SUPERSEDED

    def _stop(self, s: Session, dep: Deployment, reason: str) -> None:
        dep.state, dep.error, dep.finished_at = DEPLOYMENT_FAILED, reason, utcnow()
        for target in s.scalars(select(DeploymentTarget).where(DeploymentTarget.deployment_id == dep.id)):
            if target.state == WAITING:
                target.state = CANCELLED
                continue
            if not dep.auto_rollback or target.state in (SUPERSEDED, CANCELLED):
                continue
            device = s.get(Device, target.device_id)
            if device is not None and (device.desired or {}).get("deployment_id") == dep.id:
                device.desired = target.previous
                device.desired_revision += 1
                self._changed(s, device.id)
                if target.state == SUCCEEDED:
                    target.state = REVERTED
            target.updated_at = utcnow()

    def report(self, device_id: str, report: dict[str, Any]) -> None:
        """A device's status report: record it, move its target, advance the rollout; returns once it is
        committed.

        Group commit: reports arriving together (one HTTP request each, one thread each) are written one
        transaction at a time, each transaction taking every report queued so far. Callers queue on a
        Python lock instead of on the database's write lock (SQLite's busy handler sleeps up to 100 ms
        between tries while the lock may be free, and each waiter holds a pooled connection), and a
        rollout of N devices costs about N / batch commits instead of N."""
        item = _Queued(device_id, report)
        with self._queue_lock:
            self._queued.append(item)
        with self._writer:
            if not item.done:
                with self._queue_lock:
                    batch, self._queued = self._queued, []
                self._write(batch)
        if item.error is not None:
            raise item.error

    def _write(self, batch: list[_Queued]) -> None:
        """One transaction for ``batch``; if it fails, each report gets a transaction of its own, so one
        bad report (an unknown device: 404) fails only its own request."""
        if len(batch) > 1:
            try:
                with self.sessions.begin() as s:
                    for item in batch:
                        self._report(s, item.device_id, item.report)
            except Exception:
                log.debug("a batch of %d status reports failed; writing them one by one", len(batch))
            else:
                for item in batch:
                    item.done = True
                self._notify(s)
                return
        for item in batch:
            try:
                with self.sessions.begin() as s:
                    self._report(s, item.device_id, item.report)
            except Exception as exc:
                item.error = exc
            item.done = True
            if item.error is None:
                self._notify(s)

    def report_many(self, reports: list[tuple[str, dict[str, Any]]]) -> None:
        """Several status reports (the MQTT ingest's batch) in one transaction, in order. A report of an
        unknown device is skipped (logged), not a reason to lose the others."""
        with self.sessions.begin() as s:
            for device_id, report in reports:
                if s.get(Device, device_id) is None:
                    log.warning("status report from unknown device %s ignored", device_id)
                    continue
                self._report(s, device_id, report)
        self._notify(s)

    def _report(self, s: Session, device_id: str, report: dict[str, Any]) -> None:
        state = report.get("state")
        if report.get("deployment_id") and state in REPORTABLE:
            # replicas: reports for one deployment take its row first (FOR UPDATE; then the device's), so
            # the last report of a wave sees every other one and the wave advances exactly once; both rows
            # are read again once locked (populate_existing), not taken from the session as loaded before
            s.get(Deployment, report["deployment_id"], with_for_update=True, populate_existing=True)
        device = s.get(Device, device_id, with_for_update=True, populate_existing=True)
        if device is None:
            raise NotFound(f"device {device_id} not found")
        seq, seen = report.get("seq"), (device.reported or {}).get("seq")
        if seq is not None and seen is not None and int(seq) <= int(seen):
            return  # an outbox entry delivered twice (MQTT redelivery, HTTP retry): once is enough
        if seq is None and seen is not None:
            report = {**report, "seq": seen}
        device.reported = report
        device.last_seen_at = utcnow()
        if state in FAILED_STATES:
            device.last_error = report.get("error") or state
        elif state == SUCCEEDED:
            device.last_error = None
        deployment_id = report.get("deployment_id")
        if not deployment_id or state not in REPORTABLE:
            return
        target = s.scalar(
            select(DeploymentTarget).where(
                DeploymentTarget.deployment_id == deployment_id, DeploymentTarget.device_id == device_id
            )
        )
        if target is None or target.state not in OPEN_STATES:
            return
        target.state, target.error, target.updated_at = state, report.get("error"), utcnow()
        dep = s.get(Deployment, deployment_id)
        if dep is not None:
            self._advance(s, dep)

    def get(self, deployment_id: str) -> tuple[Deployment, list[DeploymentTarget]]:
        with self.sessions() as s:
            dep = s.get(Deployment, deployment_id)
            if dep is None:
                raise NotFound(f"deployment {deployment_id} not found")
            targets = list(
                s.scalars(
                    select(DeploymentTarget)
                    .where(DeploymentTarget.deployment_id == deployment_id)
                    .order_by(DeploymentTarget.wave, DeploymentTarget.device_id)
                )
            )
            return dep, targets

    def list(
        self, limit: int, offset: int, state: str | None = None, model_id: str | None = None
    ) -> tuple[list[tuple[Deployment, dict[str, int]]], int]:
        """Deployments newest first, each with its targets counted by state; and the total."""
        query = select(Deployment)
        if state is not None:
            query = query.where(Deployment.state == state)
        if model_id is not None:
            query = query.where(Deployment.model_id == model_id)
        with self.sessions() as s:
            total = s.scalar(select(func.count()).select_from(query.subquery())) or 0
            deps = list(
                s.scalars(
                    query.order_by(Deployment.created_at.desc(), Deployment.id).limit(limit).offset(offset)
                )
            )
            counts: dict[str, dict[str, int]] = {d.id: {} for d in deps}
            if deps:
                rows = s.execute(
                    select(DeploymentTarget.deployment_id, DeploymentTarget.state, func.count())
                    .where(DeploymentTarget.deployment_id.in_(list(counts)))
                    .group_by(DeploymentTarget.deployment_id, DeploymentTarget.state)
                )
                for dep_id, target_state, n in rows:
                    counts[dep_id][target_state] = int(n)
            return [(d, counts[d.id]) for d in deps], total

    def cancel(self, deployment_id: str, rollback: bool) -> Deployment:
        """Stop a rolling deployment (or a settled continuous one: devices enrolling later no longer join):
        targets not yet reached are cancelled; devices asked to install it but not done get their previous
        desired state back; devices that installed it keep it unless ``rollback``. A 409 otherwise."""
        with self.sessions.begin() as s:
            dep = s.get(Deployment, deployment_id, with_for_update=True)
            if dep is None:
                raise NotFound(f"deployment {deployment_id} not found")
            if dep.state != ROLLING and not (dep.continuous and dep.state == SUCCEEDED):
                raise Conflict(f"deployment {deployment_id} is {dep.state}, not rolling: nothing to cancel")
            dep.state, dep.finished_at = CANCELLED, utcnow()
            dep.error = "cancelled by an operator" + (" (installed devices rolled back)" if rollback else "")
            for target in s.scalars(select(DeploymentTarget).where(DeploymentTarget.deployment_id == dep.id)):
                if target.state in (SUPERSEDED, CANCELLED, REVERTED) or target.state in FAILED_STATES:
                    continue
                if target.state == WAITING:
                    target.state, target.updated_at = CANCELLED, utcnow()
                    continue
                installed = target.state == SUCCEEDED
                if installed and not rollback:
                    continue
                device = s.get(Device, target.device_id)
                if device is not None and (device.desired or {}).get("deployment_id") == dep.id:
                    device.desired = target.previous
                    device.desired_revision += 1
                    self._changed(s, device.id)
                target.state = REVERTED if installed else CANCELLED
                target.error = "deployment cancelled"
                target.updated_at = utcnow()
            s.flush()
            s.expunge(dep)
        self._notify(s)
        return dep
