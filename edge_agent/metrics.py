"""The agent's own metrics, served on ``GET /metrics`` whether or not the monitor runs.

One registry for the process: the monitor's :class:`~edge_agent.monitor.metrics.AgentMetrics` (drift,
prediction errors, online learners' prequential errors) plus, in :class:`DeviceMetrics`:

- ``fedge_agent_inference_seconds`` (histogram, ``model_id``/``version``; ``_count`` = inferences by model
  version): timed around the session's run in :class:`~edge_agent.runtime.session.ModelRuntime`;
  ``fedge_agent_inference_errors_total`` for inputs the model refused;
- ``fedge_agent_active_model`` (1 for the served ``model_id``/``version``/``sha256``);
- ``fedge_agent_deployments_total{status}``: outcomes the agent reported, by the protocol's status word
  (:class:`fedge_protocol.DeploymentStatus`);
- ``fedge_agent_outbox_depth``, ``fedge_agent_controller_reachable`` (the newest poll got an answer),
  ``fedge_agent_mqtt_connected`` (read when scraped);
- with FL enabled, the FL client's ``fedge_agent_fl_supernode_state{state}``, ``fedge_agent_fl_jobs``,
  ``fedge_agent_fl_rounds_in_progress``, ``fedge_agent_fl_supernode_recent_crashes`` (read when scraped).

With the monitor on, the monitor serves this registry (its port, ``<state_dir>/monitor.json``); with it off,
:class:`MetricsService` does, on the same ``metrics_host``/``metrics_port`` and file.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent.monitor.metrics import AgentMetrics
from edge_agent.process import RestartPolicy, Service
from edge_agent.runtime.session import ModelRuntime
from fedge_common.files import atomic_write
from fedge_protocol import DeploymentStatus

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from edge_agent.link.mqtt import MqttLink
    from edge_agent.link.outbox import Outbox

log = logging.getLogger("fedge.agent.metrics")
METRICS_FILE = "monitor.json"
"""Where the URL of GET /metrics is written (the monitor's file, as before)."""


class _LinkCollector:
    """Gauges read at scrape time: outbox depth, broker connection, controller reachability."""

    def __init__(self, owner: DeviceMetrics) -> None:
        self.owner = owner

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        o = self.owner
        if o.outbox is not None:
            try:
                depth = len(o.outbox)
            except sqlite3.Error:  # closed at shutdown
                depth = None
            if depth is not None:
                yield GaugeMetricFamily(
                    "fedge_agent_outbox_depth", "State reports and telemetry waiting for delivery", depth
                )
        yield GaugeMetricFamily(
            "fedge_agent_controller_reachable",
            "1 when the newest poll of the controller got an answer, 0 after a link error",
            1.0 if o.reachable else 0.0,
        )
        mqtt = o.mqtt() if o.mqtt is not None else None
        yield GaugeMetricFamily(
            "fedge_agent_mqtt_connected",
            "1 while the broker link is connected (0 also without a broker)",
            1.0 if mqtt is not None and mqtt.connected.is_set() else 0.0,
        )
        if o.fl_status is not None:  # the FL client (SuperNode service), when FL is enabled
            yield from _fl_families(o.fl_status())


def _fl_families(status: dict[str, Any]) -> Iterator[Metric]:
    from prometheus_client.core import GaugeMetricFamily

    state = GaugeMetricFamily(
        "fedge_agent_fl_supernode_state", "1 for the FL SuperNode's current state", labels=("state",)
    )
    state.add_metric((str(status.get("state")),), 1.0)
    yield state
    for name, doc, key in (
        ("fedge_agent_fl_jobs", "FL jobs the device takes part in", "jobs"),
        ("fedge_agent_fl_rounds_in_progress", "FL rounds holding the update lock now", "rounds_in_progress"),
    ):
        yield GaugeMetricFamily(name, doc, float(len(status.get(key) or ())))
    yield GaugeMetricFamily(
        "fedge_agent_fl_supernode_recent_crashes",
        "SuperNode crashes within the restart window",
        float(status.get("recent_crashes") or 0),
    )


class DeviceMetrics:
    """The runtime's, deploy loop's and links' metrics on an :class:`AgentMetrics` registry."""

    def __init__(self, metrics: AgentMetrics | None = None) -> None:
        from prometheus_client import Counter

        self.metrics = metrics or AgentMetrics()
        r = self.metrics.registry
        self.inference_errors = Counter(
            "fedge_agent_inference_errors",
            "Inferences the model refused (bad inputs), by model version",
            ("model_id", "version"),
            registry=r,
        )
        self.deployments = Counter(
            "fedge_agent_deployments",
            "Deployment outcomes the agent reported, by status word",
            ("status",),
            registry=r,
        )
        for status in DeploymentStatus:
            if status != DeploymentStatus.APPLYING:
                self.deployments.labels(status.value)
        self.outbox: Outbox | None = None
        self.mqtt: Callable[[], MqttLink | None] | None = None
        self.reachable = False
        self.fl_status: Callable[[], dict[str, Any]] | None = None
        """The FL SuperNode service's ``status`` (edge_agent.learning.supernode), read when scraped."""
        r.register(_LinkCollector(self))

    # hooks (ModelRuntime, Agent)
    def inference(self, model_id: str, version: int, seconds: float, ok: bool) -> None:
        if ok:
            self.metrics.inference_seconds.labels(model_id, str(version)).observe(seconds)
        else:
            self.inference_errors.labels(model_id, str(version)).inc()

    def active(self, model_id: str | None, version: int | None, sha256: str | None) -> None:
        self.metrics.set_active(model_id, version, sha256)

    def deployment(self, status: str) -> None:
        if status != DeploymentStatus.APPLYING:  # outcomes only
            self.deployments.labels(str(status)).inc()

    def exposition(self) -> bytes:
        return self.metrics.exposition()


def write_metrics_url(state_dir: Path, url: str) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(state_dir / METRICS_FILE, json.dumps({"metrics_url": url, "pid": os.getpid()}).encode())


class MetricsService(Service):
    """``GET /metrics`` without the monitor (its port, loopback by default)."""

    name = "metrics"
    restart = RestartPolicy()

    def __init__(self, metrics: DeviceMetrics, state_dir: Path, host: str = "127.0.0.1", port: int = 0):
        from edge_agent.monitor.service import MetricsServer

        self.metrics, self.state_dir = metrics, state_dir
        self.http = MetricsServer(metrics.metrics, host, port)

    def start(self) -> None:
        self.http.start()
        write_metrics_url(self.state_dir, self.http.url)
        log.info("metrics on %s", self.http.url)

    def stop(self) -> None:
        self.http.stop()

    def healthy(self) -> bool:
        return self.http.alive()

    def failure(self) -> str | None:
        return None


def metrics_url(state_dir: Path) -> str | None:
    """The URL a running agent serves GET /metrics on (None before it started)."""
    try:
        return str(json.loads((state_dir / METRICS_FILE).read_text())["metrics_url"])
    except (FileNotFoundError, KeyError, ValueError):
        return None


def hook(metrics: DeviceMetrics, agent: Any, outbox: Outbox | None = None) -> DeviceMetrics:
    """Wire the metrics into the deploy loop (outcomes, reachability) and the links (outbox, broker)."""
    agent.metrics = metrics
    metrics.mqtt = lambda: agent.mqtt
    metrics.outbox = outbox
    return metrics


class _TimedSession:
    """An ONNX Runtime session whose ``run`` is timed into :class:`DeviceMetrics` (the rest delegated)."""

    def __init__(self, session: Any, metrics: DeviceMetrics, model_id: str, version: int) -> None:
        self._session, self._metrics, self._model = session, metrics, (model_id, version)

    def run(self, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            out = self._session.run(*args, **kwargs)
        except Exception:
            self._metrics.inference(*self._model, time.perf_counter() - start, ok=False)
            raise
        self._metrics.inference(*self._model, time.perf_counter() - start, ok=True)
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


class MeteredRuntime(ModelRuntime):
    """A :class:`ModelRuntime` whose every session run (any API: /v1/infer, KServe v2, MQTT) is timed by
    model version, and whose swaps set ``fedge_agent_active_model``. The warm-up run is not counted."""

    def __init__(self, providers: Sequence[str] | None, metrics: DeviceMetrics) -> None:
        super().__init__(providers)
        self.metrics = metrics

    def swap(self, *args: Any, **kwargs: Any) -> None:
        super().swap(*args, **kwargs)
        with self._lock:
            a = self._active
            if a is not None and not isinstance(a.session, _TimedSession):
                timed = _TimedSession(a.session, self.metrics, a.model_id, a.version)
                self._active = a = dataclasses.replace(a, session=timed)
        self.metrics.active(a.model_id if a else None, a.version if a else None, a.sha256 if a else None)

    def clear(self) -> None:
        super().clear()
        self.metrics.active(None, None, None)
