"""The monitor service: reference from the desired state, drift events on the rising edge, error
metrics, summaries, GET /metrics over HTTP, drops counted."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge_agent.monitor.metrics import AgentMetrics, ErrorStats
from edge_agent.monitor.observer import Observation
from edge_agent.monitor.service import Monitor, MonitorConfig, MonitorService
from fedge_protocol import DriftDetector, DriftEvent, MonitorSummary, TelemetryType

Exercised = tuple[MonitorService, list[dict[str, Any]]]


def _scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_one_data_drift_event_per_drifted_episode(exercised: Exercised) -> None:
    _, records = exercised
    drift = [r for r in records if r["type"] == TelemetryType.DRIFT and r["detector"] == DriftDetector.DATA]
    assert len(drift) == 1  # window 0 quiet, window 1 shifted: one rising edge
    event = DriftEvent.model_validate(drift[0])
    assert (event.model_id, event.version, event.window) == ("m-1", 2, 1)
    assert sorted(event.drifted_features) == ["hour", "load", "temp"] and event.drift_share == 1.0
    assert set(event.scores) == {"load", "temp", "hour"} and drift[0]["reference"] == "ref-1"


def test_error_stream_alarm_after_the_error_shift(exercised: Exercised) -> None:
    _, records = exercised
    errors = [r for r in records if r["type"] == TelemetryType.DRIFT and r["detector"] != DriftDetector.DATA]
    assert errors, "ADWIN or Page-Hinkley should fire after the 4-unit error shift"
    assert all(r["observation"] > 160 for r in errors)  # none before the shift at 160
    assert {r["detector"] for r in errors} <= {DriftDetector.ADWIN, DriftDetector.PAGE_HINKLEY}


def test_metrics_endpoint_serves_what_the_monitor_saw(exercised: Exercised) -> None:
    service, _ = exercised
    samples = _scrape(service.http.url)
    model = {"model_id": "m-1", "version": "2"}
    assert _value(samples, "fedge_agent_active_model", **model, sha256="ab" * 32) == 1
    assert _value(samples, "fedge_agent_inference_seconds_count", **model) == 129  # 128 + the rejected one
    assert _value(samples, "fedge_agent_drift_detected", **model) == 1
    assert _value(samples, "fedge_agent_drift_share", **model) == 1.0
    assert _value(samples, "fedge_agent_drift_checks_total", **model) == 2
    assert _value(samples, "fedge_agent_drift_feature_drifted", **model, feature="load") == 1
    assert _value(samples, "fedge_agent_labelled_predictions_total", **model) == 320
    assert _value(samples, "fedge_agent_monitor_rejected_total") == 1
    mae = _value(samples, "fedge_agent_prediction_mae", **model)
    me = _value(samples, "fedge_agent_prediction_me", **model)
    assert mae >= 3.0 and me == pytest.approx(mae, rel=0.1)  # the last window: predictions 4 too low
    assert _value(samples, "fedge_agent_prediction_under_share", **model) > 0.9
    assert _value(samples, "fedge_agent_prediction_bias", **model) < -0.8
    with pytest.raises(urllib.error.HTTPError, match="404"):
        urllib.request.urlopen(service.http.url.replace("/metrics", "/other"), timeout=10)
    written = json.loads((service.state_dir / "monitor.json").read_text())
    assert written["metrics_url"] == service.http.url


def test_summary_telemetry(exercised: Exercised) -> None:
    _, records = exercised
    summaries = [MonitorSummary.model_validate(r) for r in records if r["type"] == TelemetryType.MONITOR]
    assert len(summaries) == 1
    s = summaries[0]
    assert (s.model_id, s.version, s.inferences, s.drift, s.drift_share) == ("m-1", 2, 129, True, 1.0)
    assert s.latency_p50_ms is not None and 0.9 <= s.latency_p50_ms <= 2.1
    assert s.errors is not None and s.errors["mae"] >= 3.0 and s.errors["n"] == 32


def test_engine_error_windows_match_error_stats() -> None:
    m = Monitor(AgentMetrics(), MonitorConfig(error_window=4, calibration=1000))
    truth, preds = [10.0, 4.0, 5.0, 2.0], [9.0, 6.0, 5.0, 3.0]
    for t, p in zip(truth, preds, strict=True):
        m.process(Observation("m", 1, y_true=t, y_pred=p))
    expected = ErrorStats()
    expected.add(truth, preds)
    watch = m.watches[("m", 1)]
    assert watch.last_window == expected.summary() and watch.labelled == 4
    reg = m.metrics.registry
    assert reg.get_sample_value(
        "fedge_agent_prediction_mape", {"model_id": "m", "version": "1"}
    ) == pytest.approx(expected.summary()["mape"])
    m.process(Observation("m", 1, y_true=[1.0, 2.0], y_pred=[1.0]))  # bad shapes: rejected, not raised
    m.process(Observation("m", 1, y_true=float("nan"), y_pred=1.0))
    assert reg.get_sample_value("fedge_agent_monitor_rejected_total") == 2
    assert m.summaries()[0]["labelled"] == 4


def test_drops_are_exported(tmp_path: Path) -> None:
    service = MonitorService(tmp_path, queue_size=1)  # not started: nothing drains the queue
    for _ in range(3):
        service.observer.observe_inference(None, None, {"x": [[1.0]]}, {}, 0.001)
    service.refresh()
    service.refresh()  # counted once
    assert service.metrics.registry.get_sample_value("fedge_agent_monitor_dropped_total") == 2
    assert service.metrics.registry.get_sample_value("fedge_agent_monitor_queue_depth") == 1


def test_a_refused_reference_leaves_monitoring_without_data_drift(tmp_path: Path) -> None:
    from tests.edge_agent.monitor.conftest import (
        ActiveModel,
        BytesFetcher,
        StubRuntime,
        reference_npz,
        write_desired,
    )

    data = reference_npz(np.random.default_rng(0))
    write_desired(tmp_path, data)
    service = MonitorService(
        tmp_path,
        runtime=StubRuntime(ActiveModel("m-1", 2, "cd" * 32)),  # type: ignore[arg-type]
        fetcher=BytesFetcher(data + b"tampered"),
    )
    service.refresh()
    assert not (tmp_path / "references" / "index.json").exists()
    assert service.monitor.watch("m-1", 2).data is None
    assert not list((tmp_path / "references").glob("*.part"))
