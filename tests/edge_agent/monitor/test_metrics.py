"""ME / MAE / MAPE / bias on constructed data, and the agent's own Prometheus registry."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edge_agent.monitor.metrics import AgentMetrics, ErrorStats


def test_error_stats_on_constructed_pairs() -> None:
    stats = ErrorStats()
    # errors y - y_hat: +1 (under), -2 (over), 0, +3 (under); the zero actual has no percentage error
    added = stats.add([10.0, 4.0, 5.0, 0.0], [9.0, 6.0, 5.0, -3.0])
    s = stats.summary()
    assert added == 4 and s["n"] == 4
    assert s["me"] == pytest.approx((1 - 2 + 0 + 3) / 4)
    assert s["mae"] == pytest.approx((1 + 2 + 0 + 3) / 4)
    assert s["mape"] == pytest.approx((0.1 + 0.5 + 0.0) / 3)
    assert s["over_share"] == pytest.approx(1 / 4) and s["under_share"] == pytest.approx(2 / 4)
    assert s["bias"] == pytest.approx((1 - 2) / 4)
    assert s["over_amount"] == pytest.approx(2.0) and s["under_amount"] == pytest.approx(2.0)


def test_error_stats_skip_non_finite_pairs_and_merge() -> None:
    a, b = ErrorStats(), ErrorStats()
    assert a.add([1.0, math.nan, 2.0], [1.5, 1.0, math.inf]) == 1
    b.add(np.array([2.0, 2.0]), np.array([1.0, 1.0]))
    a.merge(b)
    s = a.summary()
    assert s["n"] == 3 and s["me"] == pytest.approx((-0.5 + 1 + 1) / 3)
    assert math.isnan(ErrorStats().summary()["mae"])
    with pytest.raises(ValueError, match="y_true has 2 values"):
        ErrorStats().add([1.0, 2.0], [1.0])


def test_metrics_live_in_their_own_registry() -> None:
    from prometheus_client import REGISTRY

    m = AgentMetrics()
    m.set_active("model-a", 3, "ab" * 32)
    m.inference_seconds.labels("model-a", "3").observe(0.002)
    m.set_errors("model-a", 3, ErrorStats(n=2, sum_error=1.0, sum_abs=3.0).summary())
    text = m.exposition().decode()
    assert 'fedge_agent_active_model{model_id="model-a",sha256="' in text
    assert 'fedge_agent_inference_seconds_count{model_id="model-a",version="3"} 1.0' in text
    assert 'fedge_agent_prediction_mae{model_id="model-a",version="3"} 1.5' in text
    assert REGISTRY.get_sample_value("fedge_agent_monitor_observations_total") is None
    m.set_active("model-b", 1, None)
    text = m.exposition().decode()
    assert 'model_id="model-a",sha256' not in text and 'fedge_agent_active_model{model_id="model-b"' in text
