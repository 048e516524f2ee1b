"""The agent loop: poll the signed desired state (ETag, backoff with jitter), plan, execute, report.
One deployment at a time; a newer desired state is picked up by the next poll (the latest wins).

With a broker, a desired state pushed over MQTT (verified like a polled one) wakes the loop and goes
through the same apply path; several pushes coalesce into the latest. With an outbox, state reports and
telemetry are appended to it and delivered in order (MQTT when connected, state reports over HTTP
otherwise) whenever the loop runs; the active model keeps serving while the links are down.

While the update lock is held (a grid run now, an FL round later), a desired state that needs work is
deferred, not dropped: the active model keeps serving, and the newest deferred state is applied as soon
as the last holder releases the lock (the release wakes the loop; no poll needed)."""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent.deploy.executor import REJECTED, Executor, Outcome
from edge_agent.deploy.plan import Desired, plan
from edge_agent.deploy.slots import SlotStore
from edge_agent.lifecycle import Lifecycle
from edge_agent.link.client import Backoff, ControllerLink, DeviceRevoked, LinkError
from edge_agent.link.mqtt import MqttLink
from edge_agent.link.outbox import Entry, Outbox
from edge_agent.process import Service, UpdateLock
from edge_agent.runtime.session import HealthCheckFailed, ModelRuntime
from fedge_common import logs
from fedge_common.files import atomic_write
from fedge_protocol import DeploymentStatus, Leaf, StatusReport

if TYPE_CHECKING:
    from edge_agent.grid import CommandRunner

log = logging.getLogger("fedge.agent")


@dataclass
class Agent:
    """Reconciles one device's models with its desired state."""

    state_dir: Path
    link: ControllerLink
    runtime: ModelRuntime = field(default_factory=ModelRuntime)
    executor: Executor | None = None
    last_outcome: Outcome | None = None
    outbox: Outbox | None = None
    mqtt: MqttLink | None = None
    commands: CommandRunner | None = None
    """Runs device commands (``grid-run``); when set, every loop also polls for pending ones."""
    update_lock: UpdateLock = field(default_factory=UpdateLock)
    """Held by work that must not see a model swap; deployments wait for it (see the module doc)."""
    metrics: Any = None
    """:class:`edge_agent.metrics.DeviceMetrics` when GET /metrics is served: outcomes, reachability."""
    lifecycle: Lifecycle | None = None
    """Revocation (persisted) and certificate renewal (:mod:`edge_agent.lifecycle`); default: one for
    ``state_dir`` that refuses inference once revoked."""

    def __post_init__(self) -> None:
        if self.lifecycle is None:
            self.lifecycle = Lifecycle(self.state_dir)
        self.link.on_revoked = self.lifecycle.mark_revoked
        if self.lifecycle.revoked and getattr(self.link, "revoked", None) is None:
            self.link.revoked = "revoked before this start"  # nothing is sent to the controller any more
        self.slots = SlotStore(self.state_dir)
        self._wake = threading.Event()
        self._pushed: dict[str, Any] | None = None
        self._push_lock = threading.Lock()
        self._commands_route = True
        self.deferred_revision: int | None = None
        """The revision of a desired state waiting for the update lock (None: nothing waits)."""
        self.update_lock.on_release(self.wake)
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
                Outcome(
                    DeploymentStatus.FAILED_ROLLED_BACK,
                    abandoned,
                    "agent stopped during activation; back to previous",
                ),
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
        return self.apply(poll.desired, poll.changed)

    def push_desired(self, payload: dict[str, Any]) -> None:
        """A verified desired state pushed over MQTT: keep the newest and wake the loop."""
        self._keep_newest(payload)
        self._wake.set()

    def _keep_newest(self, payload: dict[str, Any]) -> None:
        with self._push_lock:
            if self._pushed is None or int(payload.get("revision", 0)) >= int(
                self._pushed.get("revision", 0)
            ):
                self._pushed = payload

    def take_pushed(self) -> dict[str, Any] | None:
        with self._push_lock:
            pushed, self._pushed = self._pushed, None
        return pushed

    def wake(self) -> None:
        self._wake.set()

    def receive_command(self, payload: dict[str, Any]) -> None:
        """A verified command (pushed over MQTT or polled): run it once, in the command worker."""
        if self.commands is not None and self.commands.submit(payload):
            log.info("command %s (%s) queued", payload.get("command_id"), payload.get("kind"))

    def poll_commands(self) -> None:
        """Fetch pending commands over HTTP (raises LinkError when the controller is unreachable)."""
        if self.commands is None or not self._commands_route:
            return
        try:
            pending = self.link.pending_commands()
        except LinkError as exc:
            if exc.status != 404:
                raise
            # An authenticated device gets 404 here only from a controller without the commands route
            # (older than the agent): stop asking instead of backing off on every loop.
            self._commands_route = False
            log.warning("controller has no device commands (%s); command polling is off until restart", exc)
            return
        for payload in pending:
            self.receive_command(payload)

    def apply(self, payload: dict[str, Any], changed: bool = True) -> Outcome | None:
        """Plan and execute a verified desired-state payload (polled or pushed)."""
        desired = Desired.from_payload(payload)
        with logs.bound(deployment_id=desired.deployment_id):  # on every line of this deployment
            return self._apply(payload, desired, changed)

    def _apply(self, payload: dict[str, Any], desired: Desired, changed: bool) -> Outcome | None:
        if changed:
            if desired.revision < self._seen_revision():
                log.warning("ignoring desired state revision %s (older than seen)", desired.revision)
                return None
            atomic_write(self.state_dir / "desired.json", json.dumps(payload).encode())
        try:
            steps = plan(self.slots.current(), desired)
        except ValueError as exc:
            refused = Outcome(REJECTED, desired.model, str(exc))
            self._report(refused, desired)
            return refused
        if not steps:
            return None
        with self.update_lock.updating() as free:
            if not free:
                self._defer(payload, desired)
                return None
            self.deferred_revision = None
            self._report(Outcome(DeploymentStatus.APPLYING, desired.model), desired)
            assert self.executor is not None
            outcome = self.executor.apply(steps, desired)
        if outcome is not None:
            self.last_outcome = outcome
            if outcome.state == REJECTED and outcome.ref is not None:
                self.slots.mark_failed(outcome.ref)
            self._report(outcome, desired)
        return outcome

    def _defer(self, payload: dict[str, Any], desired: Desired) -> None:
        """Keep a desired state that must wait for the update lock; the lock's release wakes the loop,
        which applies the newest one kept (pushed or deferred)."""
        self._keep_newest(payload)
        if self.deferred_revision != desired.revision:
            holders = ", ".join(sorted(self.update_lock.holders())) or "a holder"
            log.info(
                "desired state revision %s deferred: the update lock is held by %s", desired.revision, holders
            )
        self.deferred_revision = desired.revision

    def _report(self, outcome: Outcome, desired: Desired | None) -> None:
        active = self.runtime.active
        report = StatusReport(
            state=outcome.state,
            deployment_id=desired.deployment_id if desired else None,
            revision=desired.revision if desired else None,
            model_id=outcome.ref.model_id if outcome.ref else None,
            version=outcome.ref.version if outcome.ref else None,
            sha256=outcome.ref.sha256 if outcome.ref else None,
            error=outcome.error[:4000] if outcome.error else None,
            active_model_id=active.model_id if active else None,
            active_version=active.version if active else None,
        )
        body = report.model_dump(mode="json", exclude={"seq"})
        if self.metrics is not None:
            self.metrics.deployment(outcome.state)
        if self.outbox is not None:
            self.outbox.append(Leaf.STATE, body)
            self.flush()
            return
        try:
            self.link.report(body)
        except LinkError as exc:
            log.warning("could not report %s: %s", outcome.state, exc)

    # -------------------------------------------------------------- outbox
    def record_telemetry(self, body: dict[str, Any]) -> int:
        """Queue a telemetry record (delivered by the loop over MQTT, or over HTTP when the agent has no
        broker); returns its sequence number."""
        if self.outbox is None:
            raise RuntimeError("telemetry needs the agent's outbox")
        seq = self.outbox.append(Leaf.TELEMETRY, body)
        self._wake.set()
        return seq

    def _send(self, entry: Entry) -> bool:
        if self.mqtt is not None and self.mqtt.connected.is_set():
            return self.mqtt.publish(entry.kind, entry.seq, entry.body)
        if entry.kind != Leaf.STATE and self.mqtt is not None:
            return False  # with a broker, telemetry waits for it
        try:
            if entry.kind == Leaf.STATE:
                self.link.report({**entry.body, "seq": entry.seq})
            else:  # no broker: telemetry over HTTP
                self.link.send_telemetry(entry.seq, entry.body)
        except LinkError as exc:
            if exc.status is not None and 400 <= exc.status < 500 and exc.status not in (401, 408, 429):
                log.warning("%s seq %s refused for good (%s); dropping it", entry.kind, entry.seq, exc)
                return True
            return False
        return True

    def flush(self) -> int:
        """Deliver what the outbox holds, in order, as far as the links allow."""
        return self.outbox.deliver(self._send) if self.outbox is not None else 0

    # ---------------------------------------------------------------- loop
    def run(self, stop: threading.Event, interval: float, max_backoff: float) -> None:
        """Poll until ``stop`` is set: the poll interval (jittered) after success, backoff after errors;
        a pushed desired state or a (re)connected broker wakes the loop early."""
        backoff = Backoff(interval, max_backoff)
        assert self.lifecycle is not None
        while not stop.is_set():
            self._wake.clear()
            if self.lifecycle.revoked:  # revoked: no request any more (edge_agent.lifecycle)
                self._sleep(stop, 3600.0)
                continue
            pushed = self.take_pushed()
            try:
                self.lifecycle.maybe_renew(self.link)
                if pushed is not None:
                    self.apply(pushed)
                else:
                    self.step()
                self.poll_commands()
                wait = backoff.success()
                if self.metrics is not None:
                    self.metrics.reachable = True
            except DeviceRevoked as exc:
                self.lifecycle.mark_revoked(str(exc))  # done by the link already: a no-op then
                continue  # revoked (logged once): the loop idles from now on
            except LinkError as exc:
                wait = backoff.failure()
                if self.metrics is not None:
                    self.metrics.reachable = False
                log.warning("controller unreachable (%s); retrying in %.1fs", exc, wait)
            self.flush()
            self._sleep(stop, wait)

    def _sleep(self, stop: threading.Event, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not stop.is_set() and not self._wake.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._wake.wait(min(left, 0.2))


class DeployLoop(Service):
    """The agent loop as a service: ``start`` recovers from a crash mid-swap and serves the current model
    (:meth:`Agent.start`), then runs :meth:`Agent.run` in a thread until ``stop``."""

    name = "deploy"

    def __init__(self, agent: Agent, poll_interval: float, max_backoff: float) -> None:
        self.agent, self.poll_interval, self.max_backoff = agent, poll_interval, max_backoff
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: str | None = None

    def start(self) -> None:
        self.agent.start()
        self._stop.clear()
        self._error = None
        self._thread = threading.Thread(target=self._loop, name="fedge-agent-deploy", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        try:
            self.agent.run(self._stop, self.poll_interval, self.max_backoff)
        except Exception as exc:
            log.exception("the deploy loop crashed")
            self._error = f"{type(exc).__name__}: {exc}"

    def stop(self) -> None:
        self._stop.set()
        self.agent.wake()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def healthy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def failure(self) -> str | None:
        return self._error
