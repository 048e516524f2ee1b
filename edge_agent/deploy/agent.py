"""The agent loop: poll the signed desired state (ETag, backoff with jitter), plan, execute, report.
One deployment at a time; a newer desired state is picked up by the next poll (the latest wins)."""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent.deploy.executor import REJECTED, Executor, Outcome
from edge_agent.deploy.plan import Desired, plan
from edge_agent.deploy.slots import SlotStore
from edge_agent.identity import write_private
from edge_agent.link.client import Backoff, ControllerLink, LinkError
from edge_agent.runtime.session import HealthCheckFailed, ModelRuntime

log = logging.getLogger("fedge.agent")


@dataclass
class Agent:
    """Reconciles one device's models with its desired state."""

    state_dir: Path
    link: ControllerLink
    runtime: ModelRuntime = field(default_factory=ModelRuntime)
    executor: Executor | None = None
    last_outcome: Outcome | None = None

    def __post_init__(self) -> None:
        self.slots = SlotStore(self.state_dir)
        if self.executor is None:
            self.executor = Executor(self.slots, self.link, self.runtime)

    # ------------------------------------------------------------ start-up
    def start(self) -> None:
        """Recover from a crash mid-swap (back to the previous slot), then serve the current model."""
        abandoned = self.slots.recover()
        active = self.slots.current().active
        if active is not None:
            try:
                self.runtime.swap(active.model_id, active.version, active.sha256, self.slots.path(active))
            except HealthCheckFailed:
                log.exception("the current model does not load")
        if abandoned is not None:
            self._report(
                Outcome("failed-rolled-back", abandoned, "agent stopped during activation; back to previous"),
                None,
            )

    # ---------------------------------------------------------------- loop
    def _seen_revision(self) -> int:
        try:
            return int(json.loads((self.state_dir / "desired.json").read_text()).get("revision", 0))
        except (FileNotFoundError, ValueError):
            return 0

    def step(self) -> Outcome | None:
        """One poll and, if needed, one apply. Raises LinkError when the controller is unreachable."""
        poll = self.link.poll()
        if poll.desired is None:
            return None
        desired = Desired.from_payload(poll.desired)
        if poll.changed:
            if desired.revision < self._seen_revision():
                log.warning("ignoring desired state revision %s (older than seen)", desired.revision)
                return None
            write_private(self.state_dir / "desired.json", json.dumps(poll.desired).encode())
        try:
            steps = plan(self.slots.current(), desired)
        except ValueError as exc:
            refused = Outcome(REJECTED, desired.model, str(exc))
            self._report(refused, desired)
            return refused
        if not steps:
            return None
        self._report(Outcome("applying", desired.model), desired)
        assert self.executor is not None
        outcome = self.executor.apply(steps, desired)
        if outcome is not None:
            self.last_outcome = outcome
            if outcome.state == REJECTED and outcome.ref is not None:
                self.slots.write(
                    "failed",
                    {
                        "model_id": outcome.ref.model_id,
                        "version": outcome.ref.version,
                        "sha256": outcome.ref.sha256,
                    },
                )
            self._report(outcome, desired)
        return outcome

    def _report(self, outcome: Outcome, desired: Desired | None) -> None:
        active = self.runtime.active
        body: dict[str, Any] = {
            "state": outcome.state,
            "deployment_id": desired.deployment_id if desired else None,
            "revision": desired.revision if desired else None,
            "model_id": outcome.ref.model_id if outcome.ref else None,
            "version": outcome.ref.version if outcome.ref else None,
            "sha256": outcome.ref.sha256 if outcome.ref else None,
            "error": outcome.error,
            "active_model_id": active.model_id if active else None,
            "active_version": active.version if active else None,
        }
        try:
            self.link.report(body)
        except LinkError as exc:
            log.warning("could not report %s: %s", outcome.state, exc)

    def run(self, stop: threading.Event, interval: float, max_backoff: float) -> None:
        """Poll until ``stop`` is set: the poll interval (jittered) after success, backoff after errors."""
        backoff = Backoff(interval, max_backoff)
        while not stop.is_set():
            try:
                self.step()
                wait = backoff.success()
            except LinkError as exc:
                wait = backoff.failure()
                log.warning("controller unreachable (%s); retrying in %.1fs", exc, wait)
            stop.wait(wait)
