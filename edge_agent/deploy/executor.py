"""Runs a plan: one executor per step kind. Outcomes use Greengrass' status enum."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from edge_agent.deploy.plan import Activate, Desired, Fetch, HealthCheck, ModelRef, Remove, Step, Verify
from edge_agent.deploy.slots import SlotStore, sha256_file
from edge_agent.runtime.session import HealthCheckFailed, ModelRuntime, health_check
from fedge_protocol.status import DeploymentStatus

log = logging.getLogger("fedge.agent.deploy")

SUCCEEDED = DeploymentStatus.SUCCEEDED
ROLLED_BACK = DeploymentStatus.FAILED_ROLLED_BACK
UNABLE = DeploymentStatus.FAILED_UNABLE_TO_ROLLBACK
REJECTED = DeploymentStatus.REJECTED


class Fetcher(Protocol):
    def download(self, path: str, dest: Path) -> str: ...


class SimulatedCrash(BaseException):
    """Raised by the ``crash_after`` test hook: the process 'dies' between two steps."""


@dataclass(frozen=True)
class Outcome:
    state: DeploymentStatus
    ref: ModelRef | None
    error: str | None = None


class Executor:
    """Applies steps to the slots and the runtime; the first failing step decides the outcome."""

    def __init__(
        self,
        slots: SlotStore,
        fetcher: Fetcher,
        runtime: ModelRuntime,
        *,
        crash_after: type | None = None,
        health: Callable[[Path, Any], Any] | None = None,
    ) -> None:
        self.slots, self.fetcher, self.runtime = slots, fetcher, runtime
        self.crash_after = crash_after
        self.health = health or (lambda path, sample: health_check(path, sample, runtime.providers))

    def apply(self, steps: list[Step], desired: Desired) -> Outcome | None:
        if not steps:
            return None
        staged: dict[ModelRef, Path] = {}
        target = desired.model
        for step in steps:
            if isinstance(step, Fetch):
                dest = self.slots.staged_path()
                try:
                    self.fetcher.download(step.url, dest)
                except Exception as exc:  # link errors and disk errors alike: the old model stays
                    dest.unlink(missing_ok=True)
                    return Outcome(REJECTED, target, f"download failed: {exc}")
                staged[step.ref] = dest
            elif isinstance(step, Verify):
                path = staged.get(step.ref) or self.slots.path(step.ref)
                actual = sha256_file(path) if path.exists() else None
                if actual != step.ref.sha256:
                    if step.ref in staged:
                        path.unlink(missing_ok=True)
                    else:
                        self.slots.remove(step.ref)
                    return Outcome(
                        REJECTED,
                        step.ref,
                        f"sha256 {actual} of the artifact differs from the signed chain record "
                        f"{step.ref.sha256}",
                    )
                if step.ref in staged:
                    self.slots.install(step.ref, staged.pop(step.ref))
            elif isinstance(step, Activate):
                self.slots.activate(step.ref, deployment_id=desired.deployment_id, revision=desired.revision)
            elif isinstance(step, HealthCheck):
                try:
                    session = self.health(self.slots.path(step.ref), step.sample_input)
                except HealthCheckFailed as exc:
                    return self._roll_back(step.ref, str(exc))
                self.slots.confirm()
                self.runtime.swap(
                    step.ref.model_id, step.ref.version, step.ref.sha256, self.slots.path(step.ref), session
                )
            elif isinstance(step, Remove):
                self.slots.remove(step.ref)
            if self.crash_after is not None and isinstance(step, self.crash_after):
                raise SimulatedCrash(type(step).__name__)
        return Outcome(SUCCEEDED, target)

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
