"""Runs a plan: one executor method per step kind. Outcomes use Greengrass' status enum."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent.deploy.fetch import ArtifactRefused, Fetcher, fetch_verified, verify_file
from edge_agent.deploy.plan import Activate, Desired, Fetch, HealthCheck, ModelRef, Remove, Step, Verify
from edge_agent.deploy.slots import SlotStore
from edge_agent.runtime.session import HealthCheckFailed, ModelRuntime, health_check
from fedge_protocol.status import DeploymentStatus

log = logging.getLogger("fedge.agent.deploy")

SUCCEEDED = DeploymentStatus.SUCCEEDED
ROLLED_BACK = DeploymentStatus.FAILED_ROLLED_BACK
UNABLE = DeploymentStatus.FAILED_UNABLE_TO_ROLLBACK
REJECTED = DeploymentStatus.REJECTED


@dataclass(frozen=True)
class Outcome:
    state: DeploymentStatus
    ref: ModelRef | None
    error: str | None = None


@dataclass
class Run:
    """One plan being applied: what it is for, and the files fetched (verified) but not installed yet."""

    desired: Desired
    staged: dict[ModelRef, Path] = field(default_factory=dict)


class Executor:
    """Applies steps to the slots and the runtime; the first failing step decides the outcome."""

    def __init__(
        self,
        slots: SlotStore,
        fetcher: Fetcher,
        runtime: ModelRuntime,
        *,
        health: Callable[[Path, Any], Any] | None = None,
    ) -> None:
        self.slots, self.fetcher, self.runtime = slots, fetcher, runtime
        self.health = health or (lambda path, sample: health_check(path, sample, runtime.providers))

    def apply(self, steps: list[Step], desired: Desired) -> Outcome | None:
        if not steps:
            return None
        run = Run(desired)
        try:
            for step in steps:
                outcome = self.execute(step, run)
                if outcome is not None:
                    return outcome
        finally:
            for path in run.staged.values():  # fetched, never installed (a later step failed)
                path.unlink(missing_ok=True)
        return Outcome(SUCCEEDED, desired.model)

    def execute(self, step: Step, run: Run) -> Outcome | None:
        """Run one step; an outcome ends the plan (a failure), None goes on to the next step."""
        if isinstance(step, Fetch):
            return self.fetch(step, run)
        if isinstance(step, Verify):
            return self.verify(step, run)
        if isinstance(step, Activate):
            self.slots.activate(
                step.ref, deployment_id=run.desired.deployment_id, revision=run.desired.revision
            )
            return None
        if isinstance(step, HealthCheck):
            return self.health_check(step)
        self.remove(step)
        return None

    def fetch(self, step: Fetch, run: Run) -> Outcome | None:
        """Download to staging, hashed while streaming and compared with the signed chain hash."""
        dest = self.slots.staged_path()
        try:
            fetch_verified(self.fetcher, step.url, step.ref.sha256, dest)
        except ArtifactRefused as exc:  # the old model stays
            return Outcome(REJECTED, step.ref, str(exc))
        run.staged[step.ref] = dest
        return None

    def verify(self, step: Verify, run: Run) -> Outcome | None:
        """A fetched file was verified while it streamed: install it. An installed slot (going back into
        service) had no stream: hash it again; a slot that no longer matches is removed."""
        staged = run.staged.pop(step.ref, None)
        if staged is not None:
            self.slots.install(step.ref, staged)
            return None
        try:
            verify_file(self.slots.path(step.ref), step.ref.sha256)
        except ArtifactRefused as exc:
            self.slots.remove(step.ref)
            return Outcome(REJECTED, step.ref, str(exc))
        return None

    def health_check(self, step: HealthCheck) -> Outcome | None:
        try:
            session = self.health(self.slots.path(step.ref), step.sample_input)
        except HealthCheckFailed as exc:
            return self._roll_back(step.ref, str(exc))
        self.slots.confirm()
        self.runtime.swap(
            step.ref.model_id, step.ref.version, step.ref.sha256, self.slots.path(step.ref), session
        )
        return None

    def remove(self, step: Remove) -> None:
        self.slots.remove(step.ref)

    def _roll_back(self, failed: ModelRef, error: str) -> Outcome:
        log.warning(
            "health check of %s v%s failed (%s); rolling back", failed.model_id, failed.version, error
        )
        prev = self.slots.rollback()
        if prev is None:
            self.runtime.clear()
            return Outcome(UNABLE, failed, f"health check failed: {error}; no previous version to return to")
        try:
            self.runtime.swap(prev.model_id, prev.version, prev.sha256, self.slots.path(prev))
        except HealthCheckFailed as exc:
            self.runtime.clear()
            return Outcome(
                UNABLE, failed, f"health check failed: {error}; previous version failed too: {exc}"
            )
        return Outcome(ROLLED_BACK, failed, f"health check failed: {error}")
