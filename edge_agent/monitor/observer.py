"""What inference and the online learner hand to the monitor, and the bounded queue in between.

The producer side costs one object and one ``put_nowait``: no conversion, no lock held, no I/O. When the
queue is full the observation is dropped and counted (monitoring never slows an inference down and never
grows without bound); the monitor's worker thread does the rest (arrays, windows, detectors).
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

DEFAULT_QUEUE_SIZE = 10_000


@dataclass(frozen=True, slots=True)
class Observation:
    """One inference (inputs, outputs, latency) or one labelled prediction (``y_true`` known)."""

    model_id: str | None
    version: int | None
    features: Any = None
    """The model inputs as given: ``{name: nested list | array}`` (the first input is monitored) or rows."""
    y_pred: Any = None
    y_true: Any = None
    latency_s: float | None = None
    at: float = field(default_factory=time.time)


class ObservationQueue:
    """A bounded, non-blocking hand-over: :meth:`offer` never waits; a full queue drops and counts."""

    def __init__(self, maxsize: int = DEFAULT_QUEUE_SIZE) -> None:
        if maxsize < 1:
            raise ValueError("the monitor queue holds at least one observation")
        self._queue: queue.Queue[Observation] = queue.Queue(maxsize)
        self._dropped = 0
        self._drop_lock = threading.Lock()
        self.maxsize = maxsize

    def offer(self, observation: Observation) -> bool:
        """Queue it; False (and counted) when the queue is full."""
        try:
            self._queue.put_nowait(observation)
        except queue.Full:
            with self._drop_lock:
                self._dropped += 1
            return False
        return True

    def take(self, timeout: float) -> Observation | None:
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    @property
    def dropped(self) -> int:
        with self._drop_lock:
            return self._dropped

    def __len__(self) -> int:
        return self._queue.qsize()


class MonitorObserver:
    """The two producer hooks: :meth:`observe_inference` (the local API and MQTT inference, via
    ``InferenceService.observer``) and :meth:`on_prediction` (the online learner's prequential step)."""

    def __init__(self, observations: ObservationQueue, active: Any = None) -> None:
        self.queue = observations
        self.active = active
        """A callable returning ``(model_id, version)`` for predictions that do not name their model."""

    def observe_inference(
        self, model_id: str | None, version: int | None, inputs: Any, outputs: Any, seconds: float
    ) -> None:
        self.queue.offer(Observation(model_id, version, features=inputs, y_pred=outputs, latency_s=seconds))

    def on_prediction(
        self,
        y_true: Any,
        y_pred: Any,
        features: Any = None,
        *,
        model_id: str | None = None,
        version: int | None = None,
    ) -> None:
        """A prediction whose actual value is known (the online learner's callback shape)."""
        if model_id is None and self.active is not None:
            model_id, version = self.active()
        self.queue.offer(Observation(model_id, version, features=features, y_pred=y_pred, y_true=y_true))
