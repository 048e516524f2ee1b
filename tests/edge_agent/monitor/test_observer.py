"""The hand-over from inference to the monitor never blocks: a full queue drops and counts."""

from __future__ import annotations

import threading
import time
from typing import Any

from edge_agent.monitor.observer import MonitorObserver, Observation, ObservationQueue
from edge_agent.runtime.hooks import InferenceService


class FakeRuntime:
    """The runtime surface InferenceService uses (a real ONNX runtime is tested in tests/edge_agent)."""

    class _Active:
        model_id, version, sha256 = "m", 2, "00" * 32

    active = _Active()

    def infer(self, inputs: dict[str, Any]) -> dict[str, Any]:
        return {"y": [[v + 1.0 for v in row] for row in inputs["x"]]}


def test_full_queue_drops_and_counts_without_waiting() -> None:
    q = ObservationQueue(maxsize=2)
    started = time.perf_counter()
    accepted = [q.offer(Observation("m", 1, features=[1.0])) for _ in range(50)]
    elapsed = time.perf_counter() - started
    assert accepted[:2] == [True, True] and not any(accepted[2:])
    assert q.dropped == 48 and len(q) == 2
    assert elapsed < 5  # generous: nothing waited for a consumer (no consumer exists)
    assert q.take(0.01) is not None and q.take(0.01) is not None and q.take(0.01) is None
    assert q.offer(Observation("m", 1)) and q.dropped == 48


def test_drops_are_counted_exactly_under_concurrent_producers() -> None:
    q = ObservationQueue(maxsize=10)

    def produce() -> None:
        for _ in range(1000):
            q.offer(Observation(None, None))

    threads = [threading.Thread(target=produce) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(q) + q.dropped == 4000 and len(q) == 10


def test_inference_hands_inputs_outputs_and_latency_to_the_observer() -> None:
    q = ObservationQueue(maxsize=1)
    service = InferenceService(FakeRuntime())  # type: ignore[arg-type]
    service.observer = MonitorObserver(q)
    first = service.handle({"inputs": {"x": [[1.0, 2.0]]}})
    second = service.handle({"inputs": {"x": [[3.0, 4.0]]}})  # queue full: served all the same
    assert first["outputs"] == {"y": [[2.0, 3.0]]} and second["outputs"] == {"y": [[4.0, 5.0]]}
    obs = q.take(0.01)
    assert obs is not None and (obs.model_id, obs.version) == ("m", 2)
    assert obs.features == {"x": [[1.0, 2.0]]} and obs.y_pred == {"y": [[2.0, 3.0]]}
    assert obs.latency_s is not None and obs.latency_s >= 0 and obs.y_true is None
    assert q.dropped == 1


def test_on_prediction_names_the_active_model_when_not_told() -> None:
    q = ObservationQueue()
    observer = MonitorObserver(q, active=lambda: ("served", 7))
    observer.on_prediction(1.5, 1.0, [0.1, 0.2])
    observer.on_prediction(2.0, 2.5, None, model_id="online/meter", version=0)
    a, b = q.take(0.01), q.take(0.01)
    assert a is not None and (a.model_id, a.version, a.y_true, a.y_pred) == ("served", 7, 1.5, 1.0)
    assert b is not None and (b.model_id, b.version) == ("online/meter", 0)
