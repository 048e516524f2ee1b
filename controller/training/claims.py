"""A replica's claims on job rows, shared by training jobs (``controller/training/manager.py``) and FL jobs
(``controller/federation/manager.py``): both tables have ``state``, ``created_at``, ``started_at``,
``finished_at``, ``claimed_by`` and ``heartbeat_at``.

Any controller replica may claim a queued job (``UPDATE ... WHERE state = 'queued'``: exactly one wins); the
claiming replica stamps the row with its id and keeps a heartbeat on its running rows every
``HEARTBEAT_SECONDS``. A running row whose heartbeat is older than ``STALE_SECONDS`` (or that has none: a
controller from before the heartbeat) belongs to a replica that died: ``stale()`` lists those for the
manager to fail with its reason. Finishing is conditional (``UPDATE ... WHERE claimed_by = me AND state =
'running'``), so a replica whose heartbeat stalled long enough for another to fail its job never overwrites
that outcome; ``still_ours()`` lets a run notice it lost its job and stop.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from controller.config import ControllerSettings
from controller.db.models import utcnow
from controller.training.base import JobState

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 5.0
STALE_SECONDS = 30.0


def new_replica_id(settings: ControllerSettings) -> str:
    """Who claims jobs in this process: ``FEDGE_REPLICA_ID`` (else the host name), pid and a random tag."""
    name = settings.replica_id or socket.gethostname()[:60]
    return f"{name}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class JobClaims:
    """Claim, heartbeat, stale detection and conditional finish of one replica on one job table."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        table: Any,
        replica_id: str,
        *,
        stale_seconds: float = STALE_SECONDS,
        heartbeat_seconds: float = HEARTBEAT_SECONDS,
    ) -> None:
        self.sessions = sessions
        self.table = table
        self.replica_id = replica_id
        self.stale_seconds = stale_seconds
        self.heartbeat_seconds = heartbeat_seconds

    def claim_next(self) -> str | None:
        """Claim the oldest queued job (of the first few, racing other replicas); its id, or None."""
        t = self.table
        with self.sessions() as s:
            candidates = s.scalars(
                select(t.id).where(t.state == JobState.QUEUED.value).order_by(t.created_at).limit(5)
            ).all()
        for job_id in candidates:
            now = utcnow()
            with self.sessions.begin() as s:
                claimed = s.execute(
                    update(t)
                    .where(t.id == job_id, t.state == JobState.QUEUED.value)
                    .values(
                        state=JobState.RUNNING.value,
                        started_at=now,
                        claimed_by=self.replica_id,
                        heartbeat_at=now,
                    )
                ).rowcount  # type: ignore[attr-defined]
            if claimed == 1:
                return str(job_id)
        return None

    def beat(self) -> None:
        """Refresh the heartbeat of every job this replica runs."""
        t = self.table
        with self.sessions.begin() as s:
            s.execute(
                update(t)
                .where(t.claimed_by == self.replica_id, t.state == JobState.RUNNING.value)
                .values(heartbeat_at=utcnow())
            )

    def stale(self, s: Session) -> Sequence[Any]:
        """Running rows (locked in ``s`` on PostgreSQL) of replicas that went quiet: not ours, and no
        heartbeat for ``stale_seconds`` (or none at all)."""
        t = self.table
        cutoff = utcnow() - dt.timedelta(seconds=self.stale_seconds)
        return s.scalars(
            select(t)
            .where(
                t.state == JobState.RUNNING.value,
                or_(t.claimed_by.is_(None), t.claimed_by != self.replica_id),
                or_(t.heartbeat_at.is_(None), t.heartbeat_at < cutoff),
            )
            .with_for_update(skip_locked=True)
        ).all()

    def finish(self, s: Session, job_id: str, values: dict[str, Any]) -> bool:
        """End a job this replica runs, in ``s``: ``values`` (state, error, ...) and ``finished_at`` written
        only while it is claimed by us and running. False when it is no longer ours (another replica failed
        it while our heartbeat had stalled): its outcome stands and ours is dropped."""
        t = self.table
        finished = s.execute(
            update(t)
            .where(t.id == job_id, t.claimed_by == self.replica_id, t.state == JobState.RUNNING.value)
            .values(**values, finished_at=utcnow())
        ).rowcount  # type: ignore[attr-defined]
        if finished != 1:
            log.warning("job %s is no longer ours; its %s outcome is dropped", job_id, values.get("state"))
            return False
        return True

    def still_ours(self, job_id: str) -> bool:
        """True while this replica holds the job (claimed by us and running)."""
        t = self.table
        with self.sessions() as s:
            row = s.execute(select(t.claimed_by, t.state).where(t.id == job_id)).one_or_none()
        return row is not None and row.claimed_by == self.replica_id and row.state == JobState.RUNNING.value

    def must_stop(self, job_id: str) -> bool:
        """True when a run here should stop now: a user asked to cancel it (on any replica), or it is no
        longer ours (another replica failed it while our heartbeat had stalled: logged)."""
        t = self.table
        with self.sessions() as s:
            row = s.execute(
                select(t.cancel_requested, t.claimed_by, t.state).where(t.id == job_id)
            ).one_or_none()
        if row is None or row.cancel_requested:
            return True
        if row.claimed_by != self.replica_id or row.state != JobState.RUNNING.value:
            log.warning("job %s was ended elsewhere (%s); stopping its run here", job_id, row.state)
            return True
        return False

    def start_heartbeat(
        self, stop: threading.Event, recover: Callable[[], object], what: str
    ) -> threading.Thread:
        """A daemon thread that, until ``stop``, every ``heartbeat_seconds`` keeps our jobs alive and then
        calls ``recover()`` (the manager fails the stale jobs of replicas that went quiet)."""
        thread = threading.Thread(
            target=self._heartbeat_loop,
            args=(stop, recover, what),
            name=f"fedge-{what}-heartbeat",
            daemon=True,
        )
        thread.start()
        return thread

    def _heartbeat_loop(self, stop: threading.Event, recover: Callable[[], object], what: str) -> None:
        while not stop.wait(self.heartbeat_seconds):
            try:
                self.beat()
                recover()
            except Exception:  # a database hiccup must not end the heartbeat
                log.exception("%s heartbeat failed", what)
