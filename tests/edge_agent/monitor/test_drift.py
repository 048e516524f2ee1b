"""Detectors: no alarm on a stationary stream, an alarm after a shift (River on errors, Evidently on
windows of inputs)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from edge_agent.monitor.drift import ErrorStreamDetector, WindowedDataDrift, data_drift
from fedge_protocol import DriftDetector


def _errors(rng: np.random.Generator, n: int, mean: float = 0.0) -> np.ndarray:
    return rng.normal(mean, 1.0, n)


def test_error_stream_stays_quiet_on_stationary_errors() -> None:
    rng = np.random.default_rng(7)
    det = ErrorStreamDetector(calibration=96)
    fired = [d for e in _errors(rng, 96 * 30) for d in det.update(float(e))]
    assert det.scale is not None and det.scale == pytest.approx(0.8, abs=0.15)  # E|N(0,1)| = 0.80
    assert fired == []


def test_error_stream_fires_after_a_level_shift() -> None:
    rng = np.random.default_rng(7)
    det = ErrorStreamDetector(calibration=96)
    for e in _errors(rng, 96 * 10):
        assert det.update(float(e)) == []
    fired_at = None
    for i, e in enumerate(_errors(rng, 96 * 3, mean=2.0)):
        if det.update(float(e)):
            fired_at = i
            break
    assert fired_at is not None and fired_at < 96  # within the first window after the shift


def test_only_the_chosen_detectors_run() -> None:
    rng = np.random.default_rng(1)
    det = ErrorStreamDetector(calibration=10, detectors=(DriftDetector.PAGE_HINKLEY,))
    seen = {d for e in np.r_[_errors(rng, 200), _errors(rng, 300, 3.0)] for d in det.update(float(e))}
    assert seen == {DriftDetector.PAGE_HINKLEY}


def test_evidently_flags_the_shifted_feature_only() -> None:
    rng = np.random.default_rng(0)
    ref = pd.DataFrame({"load": rng.normal(3, 1, 1500), "temp": rng.normal(20, 5, 1500)})
    same = pd.DataFrame({"load": rng.normal(3, 1, 96), "temp": rng.normal(20, 5, 96)})
    shifted = pd.DataFrame({"load": rng.normal(4.5, 1, 96), "temp": rng.normal(20, 5, 96)})
    quiet = data_drift(ref, same, method="wasserstein", threshold=0.3)
    assert not quiet.detected and quiet.drifted == [] and set(quiet.scores) == {"load", "temp"}
    loud = data_drift(ref, shifted, method="wasserstein", threshold=0.3)
    assert loud.detected and loud.drifted == ["load"] and loud.share == pytest.approx(0.5)
    assert loud.scores["load"] > 0.3 > loud.scores["temp"] and "asserstein" in loud.methods["load"]
    pvalue = data_drift(ref, shifted, method="ks", threshold=0.01)
    assert pvalue.drifted == ["load"] and pvalue.scores["load"] < 0.01  # a p-value drifts below


def test_windows_slide_by_their_step() -> None:
    rng = np.random.default_rng(3)
    ref = pd.DataFrame({"f0": rng.normal(0, 1, 500)})
    windows = WindowedDataDrift(ref, window=50, step=25, method="wasserstein", threshold=0.3)
    results = windows.add(rng.normal(0, 1, (100, 1)))
    assert [r.window for r in results] == [0, 1, 2]  # at rows 50, 75 and 100
    results = windows.add(rng.normal(3, 1, (50, 1)))
    assert [r.detected for r in results] == [True, True]
    with pytest.raises(ValueError, match="the reference has 1"):
        windows.add(np.zeros((1, 2)))
    with pytest.raises(ValueError, match="step"):
        WindowedDataDrift(ref, window=10, step=11)
