"""In-process fleet: N real agents (identity, signed desired state, slots, ONNX Runtime) in one process.

Each simulated device is the production code path (``edge_agent.identity.enroll``, ``ControllerLink``,
the agent loop ``Agent.run``; with ``mqtt=True`` also ``MqttLink`` and the ``Outbox``, as ``fedge-agent run``
wires them: a pushed desired state wakes the loop at once, status reports go over MQTT and HTTP polls are
the fallback), with its own state directory and its own thread; only the hardware facts are made up and
ONNX Runtime sessions are opened with one thread each so that hundreds of devices fit on a small machine.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from controller.client import FedgeAPIError, FedgeClient
from controller.schemas.deployments import DeploymentOut
from edge_agent.api import make_server, serve_in_thread
from edge_agent.deploy.agent import Agent
from edge_agent.deploy.executor import Executor, Outcome
from edge_agent.deploy.slots import SlotStore
from edge_agent.identity import IDENTITY_FILE, DeviceIdentity, enroll
from edge_agent.link.client import ControllerLink
from edge_agent.link.mqtt import MqttLink
from edge_agent.link.outbox import Outbox
from edge_agent.runtime.session import HealthCheckFailed, ModelRuntime, sample_feed
from fedge_common.files import atomic_write

log = logging.getLogger("fedge.simulator.fleet")

OPEN_DEPLOYMENT_STATES = ("rolling",)


def light_session(path: Path) -> Any:
    """An ONNX Runtime CPU session with one intra-op and one inter-op thread (many devices, few cores)."""
    import onnxruntime

    opts = onnxruntime.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def light_health_check(path: Path, sample_input: Any = None) -> Any:
    """``edge_agent.runtime.session.health_check`` with a one-thread session."""
    try:
        session = light_session(path)
        session.run(None, sample_feed(session, sample_input))
    except Exception as exc:  # ORT raises its own types; all mean "not healthy"
        raise HealthCheckFailed(f"{type(exc).__name__}: {exc}") from exc
    return session


class LightRuntime(ModelRuntime):
    """``ModelRuntime`` whose start-up swap (a reused state dir) also opens one-thread sessions."""

    def swap(self, model_id: str, version: int, sha256: str, path: Path, session: Any = None) -> None:
        super().swap(model_id, version, sha256, path, session or light_health_check(path))


@dataclass(frozen=True)
class Event:
    """What one step of one agent ended with (wall-clock ``at``, seconds since the epoch)."""

    at: float
    state: str
    deployment_id: str | None
    model_id: str | None
    version: int | None


class RecordingAgent(Agent):
    """The production agent; every outcome of an apply (polled or pushed) is also handed to
    ``on_outcome(outcome, desired payload)``."""

    on_outcome: Callable[[Outcome, dict[str, Any]], None] | None = None

    def apply(self, payload: dict[str, Any], changed: bool = True) -> Outcome | None:
        outcome = super().apply(payload, changed)
        if outcome is not None and self.on_outcome is not None:
            self.on_outcome(outcome, payload)
        return outcome


class _Counters:
    """The agent's metrics hook (``Agent.metrics``), counting what a simulated fleet reports on:
    loop iterations that could not reach the controller."""

    def __init__(self, sim: SimAgent) -> None:
        self._sim = sim
        self._reachable = True

    @property
    def reachable(self) -> bool:
        return self._reachable

    @reachable.setter
    def reachable(self, value: bool) -> None:
        if not value:
            self._sim.errors += 1
        self._reachable = value

    def deployment(self, _state: str) -> None:
        pass


@dataclass
class SimAgent:
    """One simulated device: its identity, agent, optional MQTT link and local API, and the thread
    running its loop."""

    index: int
    state_dir: Path
    identity: DeviceIdentity
    link: ControllerLink
    agent: RecordingAgent
    mqtt: MqttLink | None = None
    api: ThreadingHTTPServer | None = None
    thread: threading.Thread | None = None
    events: list[Event] = field(default_factory=list)
    errors: int = 0

    on_event: Callable[[SimAgent, Event], None] | None = None
    """Called with each recorded event (from the agent's thread)."""

    def __post_init__(self) -> None:
        self.agent.on_outcome = self._record
        self.agent.metrics = _Counters(self)

    @property
    def device_id(self) -> str:
        return self.identity.device_id

    @property
    def api_url(self) -> str | None:
        return None if self.api is None else f"http://127.0.0.1:{self.api.server_port}"

    @property
    def active(self) -> tuple[str, int] | None:
        act = self.agent.runtime.active
        return None if act is None else (act.model_id, act.version)

    @property
    def connected(self) -> bool:
        """True without a broker; else once the MQTT link is connected (pushes reach the agent)."""
        return self.mqtt is None or self.mqtt.connected.is_set()

    def succeeded_at(self, deployment_id: str) -> float | None:
        """When this agent finished applying ``deployment_id`` successfully (None: not yet)."""
        for event in self.events:
            if event.deployment_id == deployment_id and event.state == "succeeded":
                return event.at
        return None

    def _record(self, outcome: Outcome, payload: dict[str, Any]) -> None:
        ref = outcome.ref
        deployment_id = payload.get("deployment_id")
        event = Event(
            time.time(),
            outcome.state,
            str(deployment_id) if deployment_id else None,
            ref.model_id if ref else None,
            ref.version if ref else None,
        )
        self.events.append(event)
        if self.on_event is not None:
            self.on_event(self, event)

    def step(self) -> None:
        """One poll (and apply); the outcome is recorded in ``events``."""
        self.agent.step()

    def loop(self, stop: threading.Event, interval: float, max_backoff: float) -> None:
        """The production agent loop (``Agent.run``): poll every ``interval`` (jittered), back off after
        errors, wake early on a pushed desired state, deliver the outbox."""
        try:
            self.agent.run(stop, interval, max_backoff)
        except Exception:  # a simulated device must not take the fleet down
            self.errors += 1
            log.exception("agent %s: loop failed", self.index)


def _point_at(state_dir: Path, controller_url: str) -> None:
    """Rewrite the stored controller URL (a reused state dir whose controller moved to another port)."""
    path = state_dir / IDENTITY_FILE
    meta = json.loads(path.read_text())
    if meta.get("api_url") != controller_url.rstrip("/"):
        meta["api_url"] = controller_url.rstrip("/")
        atomic_write(path, json.dumps(meta, indent=2).encode())


class Fleet:
    """N simulated agents against one controller, state under ``root/agent-NNNN``.

    ``with Fleet(url, admin_token, root) as fleet: fleet.ensure(100); fleet.start(); ...``
    """

    def __init__(
        self,
        controller_url: str,
        admin_token: str,
        root: Path,
        *,
        poll_interval: float = 1.0,
        max_backoff: float = 30.0,
        serve_api: bool = False,
        labels: dict[str, str] | None = None,
        http_timeout: float = 30.0,
        mqtt: bool = False,
        on_event: Callable[[SimAgent, Event], None] | None = None,
    ) -> None:
        self.url = controller_url.rstrip("/")
        self.admin_token = admin_token
        self.root = Path(root)
        self.poll_interval = poll_interval
        self.max_backoff = max_backoff
        self.serve_api = serve_api
        self.labels = dict(labels or {})
        self.http_timeout = http_timeout
        self.mqtt = mqtt
        """Connect each agent to the broker named at enrollment (push; reports over MQTT via the outbox)."""
        self.on_event = on_event
        """Called with every agent's events as they happen (from the agents' threads)."""
        self.agents: list[SimAgent] = []
        self._stop = threading.Event()
        self.client = FedgeClient(self.url, admin_token)

    # ------------------------------------------------------------ lifecycle
    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.stop()
        for sim in self.agents:
            sim.link.close()
            if sim.agent.outbox is not None:
                sim.agent.outbox.close()
        self.client.close()

    def _state_dir(self, index: int) -> Path:
        return self.root / f"agent-{index:04d}"

    def _make(self, index: int, identity: DeviceIdentity) -> SimAgent:
        state_dir = self._state_dir(index)
        link = ControllerLink(identity, timeout=self.http_timeout)
        runtime = LightRuntime()
        executor = Executor(SlotStore(state_dir), link, runtime, health=light_health_check)
        use_mqtt = self.mqtt and bool(identity.broker_url)
        outbox = Outbox.in_state_dir(state_dir) if use_mqtt else None
        agent = RecordingAgent(state_dir, link, runtime, executor, outbox=outbox)
        agent.start()
        if use_mqtt:
            agent.mqtt = MqttLink(identity, state_dir, agent.push_desired, on_connect=agent.wake)
        return SimAgent(index, state_dir, identity, link, agent, mqtt=agent.mqtt, on_event=self.on_event)

    def enroll_one(self, index: int, labels: dict[str, str] | None = None) -> SimAgent:
        """Mint a one-time token (admin SDK) and enroll a new device in ``root/agent-<index>``."""
        sim = self._enroll(index, labels)
        self.agents.append(sim)
        return sim

    def _enroll(self, index: int, labels: dict[str, str] | None = None) -> SimAgent:
        all_labels = {**self.labels, **(labels or {}), "sim-index": str(index)}
        token = self.client.enrollment_token(all_labels, ttl_seconds=600).token
        facts = {"simulated": True, "cpu_count": 1, "ort_providers": ["CPUExecutionProvider"]}
        identity = enroll(self.url, token, self._state_dir(index), all_labels, facts)
        return self._make(index, identity)

    def load_one(self, index: int) -> SimAgent | None:
        """Reuse an enrolled state dir (pointed at this controller's URL), or None if there is none or the
        controller no longer knows (or has revoked) the device."""
        sim = self._load(index)
        if sim is not None:
            self.agents.append(sim)
        return sim

    def _load(self, index: int) -> SimAgent | None:
        state_dir = self._state_dir(index)
        if not (state_dir / IDENTITY_FILE).exists():
            return None
        _point_at(state_dir, self.url)
        identity = DeviceIdentity.load(state_dir)
        try:
            device = self.client.device(identity.device_id)
        except FedgeAPIError as exc:
            if exc.status == 404:
                return None
            raise
        if device.status != "active":
            return None
        return self._make(index, identity)

    def _load_or_enroll(self, index: int, reuse: bool) -> SimAgent:
        sim = self._load(index) if reuse else None
        if sim is None:
            state_dir = self._state_dir(index)
            if state_dir.exists():  # stale (revoked, or a controller that forgot it): start afresh
                _clear(state_dir)
            sim = self._enroll(index)
        return sim

    def ensure(
        self,
        n: int,
        *,
        reuse: bool = True,
        progress: Callable[[int, int], None] | None = None,
        workers: int = 1,
    ) -> list[SimAgent]:
        """``n`` agents: state dirs enrolled earlier are reused (``reuse``), the rest are enrolled now,
        ``workers`` at a time (the controller signs each CSR; a few in parallel keep it busy)."""
        from concurrent.futures import ThreadPoolExecutor

        indexes = range(len(self.agents), n)
        with ThreadPoolExecutor(max(1, workers), thread_name_prefix="sim-enroll") as pool:
            for sim in pool.map(lambda i: self._load_or_enroll(i, reuse), indexes):
                self.agents.append(sim)
                if progress is not None:
                    progress(len(self.agents), n)
        return self.agents

    def start(self, ramp: float = 0.0) -> None:
        """Start each agent's loop in its own thread (and its local API when ``serve_api``, its MQTT link
        with ``mqtt``), the starts spread evenly over ``ramp`` seconds (a fleet does not boot in one
        instant: without a ramp, N first polls and N broker logins arrive together)."""
        self._stop.clear()
        pause = ramp / len(self.agents) if self.agents else 0.0
        for i, sim in enumerate(self.agents):
            if i and pause:
                time.sleep(pause)
            if sim.mqtt is not None and not sim.mqtt.connected.is_set():
                sim.mqtt.start()
            if self.serve_api and sim.api is None:
                sim.api = make_server(sim.agent.runtime, "127.0.0.1", 0)
                serve_in_thread(sim.api)
            if sim.thread is None or not sim.thread.is_alive():
                sim.thread = threading.Thread(
                    target=sim.loop,
                    args=(self._stop, self.poll_interval, self.max_backoff),
                    name=f"sim-agent-{sim.index}",
                    daemon=True,
                )
                sim.thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        for sim in self.agents:
            sim.agent.wake()
        links = [sim.mqtt for sim in self.agents if sim.mqtt is not None]
        if links:  # in parallel: a link waiting to reconnect takes up to a second to stop
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(32, thread_name_prefix="sim-mqtt-stop") as pool:
                list(pool.map(lambda link: link.stop(), links))
        for sim in self.agents:
            if sim.thread is not None:
                sim.thread.join(timeout)
                sim.thread = None
            if sim.api is not None:
                sim.api.shutdown()
                sim.api.server_close()
                sim.api = None

    # ------------------------------------------------------------ helpers
    @property
    def device_ids(self) -> list[str]:
        return [sim.device_id for sim in self.agents]

    def deploy(self, model_id: str, version: int | None = None, **kw: Any) -> str:
        """Deploy to this fleet's devices (``device_ids`` by default); returns the deployment id."""
        if "device_ids" not in kw and "selector" not in kw:
            kw["device_ids"] = self.device_ids
        return self.client.deploy(model_id, version, **kw).deployment_id

    def wait_deployment(
        self, deployment_id: str, timeout: float = 300.0, poll: float = 0.25
    ) -> DeploymentOut:
        """Poll the controller until the rollout leaves ``rolling``; TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            dep = self.client.deployment(deployment_id)
            if dep.state not in OPEN_DEPLOYMENT_STATES:
                return dep
            if time.monotonic() > deadline:
                counts = _count(t.state for t in dep.devices)
                raise TimeoutError(f"deployment {deployment_id} still rolling after {timeout} s: {counts}")
            time.sleep(poll)

    def wait_active(
        self,
        model_id: str,
        version: int,
        timeout: float = 300.0,
        agents: Iterable[SimAgent] | None = None,
        poll: float = 0.1,
    ) -> None:
        """Wait until every agent (or those given) serves ``model_id`` v``version``."""
        chosen = list(agents if agents is not None else self.agents)
        deadline = time.monotonic() + timeout
        while True:
            missing = [s for s in chosen if s.active != (model_id, version)]
            if not missing:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(missing)} of {len(chosen)} agents not on {model_id} v{version}")
            time.sleep(poll)

    def wait_connected(self, timeout: float = 60.0) -> None:
        """Wait until every agent's MQTT link is connected (no-op without ``mqtt``)."""
        deadline = time.monotonic() + timeout
        while True:
            missing = [s for s in self.agents if not s.connected]
            if not missing:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(missing)} of {len(self.agents)} agents not connected to the broker")
            time.sleep(0.1)

    def convergence(self, deployment_id: str) -> dict[str, float | None]:
        """device id -> when it reported success for ``deployment_id`` (epoch seconds; None: not yet)."""
        return {sim.device_id: sim.succeeded_at(deployment_id) for sim in self.agents}


def _count(states: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for state in states:
        out[state] = out.get(state, 0) + 1
    return out


def _clear(state_dir: Path) -> None:
    import shutil

    shutil.rmtree(state_dir)


__all__ = [
    "Event",
    "Fleet",
    "LightRuntime",
    "RecordingAgent",
    "SimAgent",
    "light_health_check",
    "light_session",
]
