"""The agent's monitor: observations in (bounded queue), metrics out (Prometheus on loopback), summaries
and drift events to the controller (telemetry through the agent's outbox).

:class:`Monitor` is the engine, one call per observation and no threads (tests drive it directly): per
model version it keeps the data-drift windows (when the version has a reference data set), the error
statistics of the current window and since start, and the error-stream detectors. :class:`MonitorService`
hosts it in the agent process: a worker thread drains the queue, refreshes the active model and its
reference (from the verified ``desired.json`` the deploy loop writes), sends a :class:`MonitorSummary`
every ``summary_seconds`` and serves ``GET /metrics``.

Events: a data-drift alarm is sent when a window drifts after one that did not (the rising edge); an
error-stream alarm when ADWIN or Page-Hinkley fires, at most once per detector per error window.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_agent.deploy.fetch import ArtifactRefused
from edge_agent.monitor.drift import (
    DriftCheck,
    DriftResult,
    ErrorStreamDetector,
    ProcessDriftCheck,
    WindowedDataDrift,
    data_drift,
    preload_evidently,
)
from edge_agent.monitor.metrics import AgentMetrics, ErrorStats
from edge_agent.monitor.observer import MonitorObserver, Observation, ObservationQueue
from edge_agent.monitor.reference import ReferenceInvalid, ReferenceStore, load_reference
from edge_agent.process import RestartPolicy, Service
from fedge_common.files import atomic_write
from fedge_protocol import DriftDetector, DriftEvent, MonitorSummary

if TYPE_CHECKING:
    from edge_agent.config import AgentSettings
    from edge_agent.deploy.fetch import Fetcher
    from edge_agent.runtime.session import ModelRuntime

log = logging.getLogger("fedge.agent.monitor")
Record = Callable[[dict[str, Any]], int]
NO_MODEL = ("none", 0)


@dataclass(frozen=True)
class MonitorConfig:
    """How the monitor decides (the agent settings ``FEDGE_AGENT_DRIFT_*`` fill it)."""

    window: int = 96
    """Rows per data-drift window (96 = one day of 15-minute readings)."""
    step: int | None = None
    """Rows between two checks (None: the window size, i.e. windows do not overlap)."""
    drift_share: float = 0.5
    method: str | None = "wasserstein"
    threshold: float | None = 0.3
    error_window: int = 96
    """Labelled predictions per ME/MAE/MAPE/bias window."""
    calibration: int = 96
    """Errors that set the error-stream scale before the detectors start."""
    ph_threshold: float = 50.0
    ph_delta: float = 0.5
    detectors: tuple[DriftDetector, ...] = (DriftDetector.ADWIN, DriftDetector.PAGE_HINKLEY)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def feature_rows(features: Any) -> np.ndarray:
    """Observation features -> float rows (n, width): the first input of a ``{name: tensor}`` request,
    flattened per batch row; a 1-D value is one row."""
    if isinstance(features, dict):
        if not features:
            raise ValueError("no inputs")
        features = next(iter(features.values()))
    arr = np.asarray(features, dtype=np.float64)
    if arr.ndim == 0:
        return arr.reshape(1, 1)
    if arr.ndim == 1:
        return arr.reshape(1, -1)
    return arr.reshape(arr.shape[0], -1)


def _values(value: Any) -> np.ndarray:
    if isinstance(value, dict):
        if not value:
            raise ValueError("no outputs")
        value = next(iter(value.values()))
    return np.asarray(value, dtype=np.float64).ravel()


@dataclass
class ModelWatch:
    """What the monitor keeps for one model version."""

    model_id: str
    version: int
    data: WindowedDataDrift | None = None
    reference_id: str | None = None
    window_errors: ErrorStats = field(default_factory=ErrorStats)
    last_window: dict[str, float] | None = None
    total_errors: ErrorStats = field(default_factory=ErrorStats)
    errors: ErrorStreamDetector | None = None
    last_drift: DriftResult | None = None
    labelled: int = 0
    last_fired: dict[DriftDetector, int] = field(default_factory=dict)
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=4096))
    inferences: int = 0


class Monitor:
    """The monitoring engine (see the module doc). ``record``: where telemetry records go."""

    def __init__(
        self,
        metrics: AgentMetrics,
        config: MonitorConfig | None = None,
        record: Record | None = None,
        check: DriftCheck = data_drift,
    ) -> None:
        self.metrics = metrics
        self.config = config or MonitorConfig()
        self.record = record
        self.check = check
        self.observe_latency = True
        """False when the runtime observes fedge_agent_inference_seconds (edge_agent.metrics)."""
        self.watches: dict[tuple[str, int], ModelWatch] = {}
        self.events: list[dict[str, Any]] = []
        """Every event raised (newest last, at most 100 kept), whether or not ``record`` took it."""

    def watch(self, model_id: str | None, version: int | None) -> ModelWatch:
        key = (model_id, int(version or 0)) if model_id else NO_MODEL
        found = self.watches.get(key)
        if found is None:
            found = self.watches[key] = ModelWatch(*key)
        return found

    def set_reference(self, model_id: str, version: int, reference: Any, reference_id: str) -> None:
        """Start data-drift windows for a model version against ``reference`` (a DataFrame)."""
        c = self.config
        w = self.watch(model_id, version)
        w.data = WindowedDataDrift(
            reference, c.window, c.step, c.drift_share, c.method, c.threshold, self.check
        )
        w.reference_id = reference_id

    # ---------------------------------------------------------------- observations
    def process(self, obs: Observation) -> None:
        """Use one observation; a malformed one is counted as rejected, never raised."""
        self.metrics.observations.inc()
        w = self.watch(obs.model_id, obs.version)
        labels = (w.model_id, str(w.version))
        try:
            if obs.latency_s is not None:
                w.inferences += 1
                w.latencies.append(obs.latency_s)
                if self.observe_latency:  # else the runtime observes it (edge_agent.metrics)
                    self.metrics.inference_seconds.labels(*labels).observe(obs.latency_s)
            if obs.features is not None and w.data is not None:
                try:
                    self._data_drift(w, feature_rows(obs.features))
                except (ValueError, TypeError):
                    raise
                except Exception:  # the check itself failed (its child process died, a timeout)
                    self.metrics.rejected.inc()
                    log.exception("data-drift check of %s v%s failed", w.model_id, w.version)
            if obs.y_true is not None and obs.y_pred is not None:
                self._errors(w, _values(obs.y_true), _values(obs.y_pred))
        except (ValueError, TypeError) as exc:
            self.metrics.rejected.inc()
            log.debug("observation for %s v%s rejected: %s", w.model_id, w.version, exc)

    def _data_drift(self, w: ModelWatch, rows: np.ndarray) -> None:
        assert w.data is not None
        if not np.isfinite(rows).all():
            raise ValueError("non-finite features")
        labels = (w.model_id, str(w.version))
        for result in w.data.add(rows):
            m = self.metrics
            m.drift_checks.labels(*labels).inc()
            m.drift_check_seconds.observe(result.seconds)
            m.drift_detected.labels(*labels).set(1 if result.detected else 0)
            m.drift_share.labels(*labels).set(result.share)
            for feature, score in result.scores.items():
                m.feature_score.labels(*labels, feature, result.methods.get(feature, "")).set(score)
                m.feature_drifted.labels(*labels, feature).set(1 if feature in result.drifted else 0)
            rising = result.detected and not (w.last_drift is not None and w.last_drift.detected)
            w.last_drift = result
            if rising:
                self._event(
                    w,
                    DriftEvent(
                        model_id=w.model_id,
                        version=w.version,
                        detector=DriftDetector.DATA,
                        window=result.window,
                        drift_share=result.share,
                        drifted_features=result.drifted,
                        scores=result.scores,
                        at=_now(),
                        reference=w.reference_id,
                        window_size=w.data.window,
                    ),
                )

    def _errors(self, w: ModelWatch, y_true: np.ndarray, y_pred: np.ndarray) -> None:
        if y_true.shape != y_pred.shape:
            raise ValueError(f"{y_true.size} actual values for {y_pred.size} predictions")
        labels = (w.model_id, str(w.version))
        c = self.config
        if w.errors is None:
            w.errors = ErrorStreamDetector(
                calibration=c.calibration,
                ph_threshold=c.ph_threshold,
                ph_delta=c.ph_delta,
                detectors=c.detectors,
            )
        for t, p in zip(y_true, y_pred, strict=True):
            if not (math.isfinite(t) and math.isfinite(p)):
                self.metrics.rejected.inc()
                continue
            w.window_errors.add(t, p)
            w.labelled += 1
            self.metrics.labelled.labels(*labels).inc()
            for detector in w.errors.update(float(t - p)):
                self.metrics.drift_alarms.labels(*labels, detector.value).inc()
                last = w.last_fired.get(detector)
                if last is not None and w.labelled - last < c.error_window:
                    continue
                w.last_fired[detector] = w.labelled
                self._event(
                    w,
                    DriftEvent(
                        model_id=w.model_id,
                        version=w.version,
                        detector=detector,
                        window=w.labelled // c.error_window,
                        at=_now(),
                        observation=w.labelled,
                        error_scale=w.errors.scale,
                    ),
                    count=False,
                )
            if w.window_errors.n >= c.error_window:
                self._close_error_window(w)

    def _close_error_window(self, w: ModelWatch) -> None:
        summary = w.window_errors.summary()
        self.metrics.set_errors(w.model_id, w.version, summary)
        w.total_errors.merge(w.window_errors)
        w.last_window = summary
        w.window_errors = ErrorStats()

    def _event(self, w: ModelWatch, event: DriftEvent, count: bool = True) -> None:
        if count:
            self.metrics.drift_alarms.labels(w.model_id, str(w.version), event.detector.value).inc()
        body = event.model_dump(mode="json")
        self.events.append(body)
        del self.events[:-100]
        log.warning(
            "drift on %s v%s (%s, window %s)", w.model_id, w.version, event.detector.value, event.window
        )
        if self.record is not None:
            try:
                self.record(body)
            except Exception:
                log.exception("could not queue the drift event")

    # ---------------------------------------------------------------- summaries
    def summaries(self, dropped: int = 0) -> list[dict[str, Any]]:
        """One :class:`MonitorSummary` per model version seen since the last call (then reset)."""
        out = []
        for w in self.watches.values():
            if not w.inferences and not w.labelled and w.last_drift is None:
                continue
            lat = np.asarray(w.latencies, dtype=np.float64) * 1000
            errors = w.last_window or (w.window_errors.summary() if w.window_errors.n else None)
            summary = MonitorSummary(
                model_id=None if (w.model_id, w.version) == NO_MODEL else w.model_id,
                version=None if (w.model_id, w.version) == NO_MODEL else w.version,
                inferences=w.inferences,
                latency_p50_ms=float(np.percentile(lat, 50)) if lat.size else None,
                latency_p99_ms=float(np.percentile(lat, 99)) if lat.size else None,
                dropped=dropped,
                errors={k: v for k, v in errors.items() if not math.isnan(v)} if errors else None,
                drift=w.last_drift.detected if w.last_drift else None,
                drift_share=w.last_drift.share if w.last_drift else None,
                at=_now(),
                labelled=w.labelled,
            )
            out.append(summary.model_dump(mode="json"))
            w.inferences, w.latencies = 0, deque(maxlen=w.latencies.maxlen)
        return out


class MetricsServer:
    """``GET /metrics`` (Prometheus text format) on its own port, loopback by default."""

    def __init__(self, metrics: AgentMetrics, host: str, port: int) -> None:
        self.metrics, self.host, self.port = metrics, host, port
        self.server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        port = self.server.server_port if self.server is not None else self.port
        return f"http://{self.host}:{port}/metrics"

    def start(self) -> None:
        from prometheus_client import CONTENT_TYPE_LATEST

        metrics = self.metrics

        class Handler(BaseHTTPRequestHandler):
            server_version = "fedge-agent-metrics"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/metrics":
                    body, status, ctype = b"not found\n", 404, "text/plain"
                else:
                    body, status, ctype = metrics.exposition(), 200, CONTENT_TYPE_LATEST
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer((self.host, self.port), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="fedge-agent-metrics", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()


class MonitorService(Service):
    """The monitor as a service of the agent process (see the module doc)."""

    name = "monitor"
    restart = RestartPolicy()

    def __init__(
        self,
        state_dir: Path,
        *,
        runtime: ModelRuntime | None = None,
        fetcher: Fetcher | None = None,
        record: Record | None = None,
        config: MonitorConfig | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        queue_size: int = 10_000,
        summary_seconds: float = 60.0,
        refresh_seconds: float = 2.0,
        isolate: bool = True,
        metrics: AgentMetrics | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.runtime = runtime
        self.metrics = metrics or AgentMetrics()
        """Given: the process's registry (edge_agent.metrics), whose runtime times inference itself."""
        self.isolated = ProcessDriftCheck() if isolate else None
        """Drift checks in a child process (True: inference keeps its latency while a window is checked)."""
        self.monitor = Monitor(self.metrics, config, record, self.isolated or data_drift)
        self.monitor.observe_latency = metrics is None
        self.queue = ObservationQueue(queue_size)
        self.observer = MonitorObserver(self.queue, self._active_key)
        self.references = ReferenceStore(state_dir, fetcher)
        self.http = MetricsServer(self.metrics, host, port)
        self.record = record
        self.summary_seconds, self.refresh_seconds = summary_seconds, refresh_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._desired_mtime: float | None = None
        self._loaded: dict[tuple[str, int], str] = {}
        self._reported_dropped = 0
        self._counted_drops = 0
        self._preloading = False
        self._preload_thread: threading.Thread | None = None
        self._error: str | None = None

    def _active_key(self) -> tuple[str | None, int | None]:
        active = self.runtime.active if self.runtime is not None else None
        return (active.model_id, active.version) if active else (None, None)

    # ---------------------------------------------------------------- service
    def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.http.start()
        atomic_write(
            self.state_dir / "monitor.json",
            json.dumps({"metrics_url": self.http.url, "pid": os.getpid()}).encode(),
        )
        log.info("metrics on %s", self.http.url)
        self._stop.clear()
        self._error = None
        self._thread = threading.Thread(target=self._loop, name="fedge-agent-monitor", daemon=True)
        self._thread.start()

    def _preload(self) -> None:
        try:
            if self.isolated is not None:
                self.isolated.start()
            else:
                preload_evidently()
        except Exception as exc:  # missing extra: data drift stays off, logged once
            log.warning("data drift is off: %s", exc)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._preload_thread is not None:  # a child being spawned is closed with the rest
            self._preload_thread.join(timeout=300)
        if self.isolated is not None:
            self.isolated.close()
        self.http.stop()

    def healthy(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.http.alive()

    def failure(self) -> str | None:
        return self._error

    # ---------------------------------------------------------------- worker
    def _loop(self) -> None:
        next_refresh = next_summary = time.monotonic()
        next_summary += self.summary_seconds
        try:
            while not self._stop.is_set():
                obs = self.queue.take(0.2)
                if obs is not None:
                    self.monitor.process(obs)
                now = time.monotonic()
                if now >= next_refresh:
                    next_refresh = now + self.refresh_seconds
                    self.refresh()
                if now >= next_summary:
                    next_summary = now + self.summary_seconds
                    self.send_summaries()
        except Exception as exc:
            log.exception("the monitor crashed")
            self._error = f"{type(exc).__name__}: {exc}"

    def drain(self, timeout: float = 5.0) -> None:
        """Process what is queued now (tests and the bench; the worker does this by itself)."""
        deadline = time.monotonic() + timeout
        while len(self.queue) and time.monotonic() < deadline:
            time.sleep(0.01)

    def refresh(self) -> None:
        """Active-model gauge, queue gauges; fetch the reference a new desired state names and load the
        active version's reference. A refused reference is logged; monitoring goes on without drift."""
        self.metrics.queue_depth.set(len(self.queue))
        self.metrics.dropped.inc(self.queue.dropped - self._counted_drops)
        self._counted_drops = self.queue.dropped
        active = self.runtime.active if self.runtime is not None else None
        self.metrics.set_active(
            active.model_id if active else None,
            active.version if active else None,
            active.sha256 if active else None,
        )
        desired = self.state_dir / "desired.json"
        try:
            mtime = desired.stat().st_mtime
        except FileNotFoundError:
            mtime = None
        if mtime is not None and mtime != self._desired_mtime:
            self._desired_mtime = mtime
            try:
                self.references.sync_desired(json.loads(desired.read_text()))
            except Exception as exc:  # refused or unreadable: logged, retried when desired.json changes
                log.warning("drift reference not usable: %s", exc)
        if active is not None:
            self.load_reference(active.model_id, active.version)

    def load_reference(self, model_id: str, version: int) -> bool:
        """Use the indexed reference of a model version for data drift (once per reference)."""
        key = (model_id, version)
        stored = self.references.indexed(model_id, version)
        if stored is None or self._loaded.get(key) == stored.reference.sha256:
            return stored is not None  # nothing to load, or loaded (the file is hashed once per load)
        try:
            self.references.lookup(model_id, version)  # hashed again right before it is read
            frame = load_reference(stored.path)
        except ArtifactRefused as exc:
            log.warning("drift reference of %s v%s refused: %s", model_id, version, exc)
            self._loaded[key] = stored.reference.sha256
            return False
        except ReferenceInvalid as exc:
            log.warning("drift reference %s is not usable: %s", stored.reference.dataset_id, exc)
            self._loaded[key] = stored.reference.sha256
            return False
        self.monitor.set_reference(model_id, version, frame, stored.reference.dataset_id)
        self._loaded[key] = stored.reference.sha256
        if not self._preloading:  # Evidently (and its child process) only once a reference is in use
            self._preloading = True
            self._preload_thread = threading.Thread(
                target=self._preload, name="fedge-agent-evidently-import", daemon=True
            )
            self._preload_thread.start()
        log.info("drift reference %s loaded for %s v%s", stored.reference.dataset_id, model_id, version)
        return True

    def drift_status(self, model_id: str, version: int) -> dict[str, Any] | None:
        """What the monitor knows about one model's drift (for status pages); None before any data."""
        w = self.monitor.watches.get((model_id, version))
        if w is None:
            return None
        events = [
            e for e in self.monitor.events if e.get("model_id") == model_id and e.get("version") == version
        ]
        return {
            "data_drift": w.last_drift.detected if w.last_drift else None,
            "drift_share": w.last_drift.share if w.last_drift else None,
            "reference": w.reference_id,
            "labelled": w.labelled,
            "errors": w.last_window,
            "alarms": len(events),
            "last_alarm": events[-1] if events else None,
        }

    def watch_learner(self, learner: Any) -> None:
        """Feed an online learner's prequential predictions (its ``observers``, called as
        ``(y_true, y_pred, features)``) to the monitor as model ``online/<name>`` version 0, and show the
        drift status in its ``status()`` (its ``drift`` hook)."""
        model_id = f"online/{learner.config.name}"

        def observe(y_true: Any, y_pred: Any, features: Any) -> None:
            self.observer.on_prediction(y_true, y_pred, features, model_id=model_id, version=0)

        learner.observers.append(observe)
        learner.drift = lambda: self.drift_status(model_id, 0)

    def send_summaries(self) -> None:
        dropped = self.queue.dropped
        for body in self.monitor.summaries(dropped - self._reported_dropped):
            if self.record is not None:
                try:
                    self.record(body)
                except Exception:
                    log.exception("could not queue the monitor summary")
        self._reported_dropped = dropped


def monitor_from_settings(
    settings: AgentSettings,
    runtime: ModelRuntime,
    fetcher: Fetcher | None,
    record: Record | None,
    metrics: AgentMetrics | None = None,
) -> MonitorService | None:
    """The monitor of ``fedge-agent run`` (None, with a warning, when it is off or its extra is missing)."""
    from edge_agent.monitor.metrics import prometheus_available

    if not settings.monitor:
        return None
    missing = prometheus_available()
    if missing is not None:
        log.warning("monitoring is off: %s", missing)
        return None
    config = MonitorConfig(
        window=settings.drift_window,
        step=settings.drift_step,
        drift_share=settings.drift_share,
        method=settings.drift_method,
        threshold=settings.drift_threshold,
        error_window=settings.error_window,
    )
    return MonitorService(
        settings.state_dir,
        runtime=runtime,
        fetcher=fetcher,
        record=record,
        config=config,
        host=settings.metrics_host,
        port=settings.metrics_port,
        queue_size=settings.monitor_queue_size,
        summary_seconds=settings.monitor_summary_seconds,
        metrics=metrics,
    )
