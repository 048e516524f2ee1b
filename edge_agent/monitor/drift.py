"""Drift detectors: Evidently's DataDriftPreset over sliding windows of inputs (against the model's
reference data set), and River's ADWIN and Page-Hinkley on the prediction-error stream (cheap, always on
while actual values arrive).

Evidently is imported lazily, once (its import takes seconds and must never sit on an inference's path),
with ``DO_NOT_TRACK=1`` so it sends nothing anywhere. Its result is read from ``Snapshot.dict()``: the
``DriftedColumnsCount`` metric (share of drifted columns; the dataset drifts when the share reaches the
preset's ``drift_share``, 0.5 by default) and one ``ValueDrift`` metric per column (its method, threshold
and score: a p-value drifts *below* the threshold, a distance *at or above* it).

The error stream is normalised before River sees it: ``e / scale``, with ``scale`` the mean absolute error
of the first ``calibration`` errors (so thresholds are in "typical errors", whatever the unit).
"""

from __future__ import annotations

import functools
import importlib
import os
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedge_protocol import DriftDetector


class MonitorUnavailable(RuntimeError):
    """A monitoring dependency is not installed (the message names the extra)."""


@functools.cache
def _evidently() -> tuple[Any, Any]:
    """(Report, DataDriftPreset), imported once."""
    os.environ.setdefault("DO_NOT_TRACK", "1")
    try:
        with warnings.catch_warnings():
            # evidently.legacy touches numpy.core at import time (a DeprecationWarning, nothing else)
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            report = importlib.import_module("evidently").Report
            preset = importlib.import_module("evidently.presets").DataDriftPreset
    except ImportError as exc:
        raise MonitorUnavailable(
            "data drift needs the monitor extra: pip install 'fedge[agent,monitor]'"
        ) from exc
    return report, preset


_import_lock = threading.Lock()


def preload_evidently() -> None:
    """Import Evidently now (in a background thread at start-up, so the first check does not wait)."""
    with _import_lock:
        _evidently()


@dataclass(frozen=True)
class DriftResult:
    """One data-drift check of a window against the reference."""

    detected: bool
    share: float
    drifted: list[str]
    scores: dict[str, float]
    methods: dict[str, str]
    seconds: float
    window: int = 0


def data_drift(
    reference: Any,
    current: Any,
    drift_share: float = 0.5,
    method: str | None = None,
    threshold: float | None = None,
) -> DriftResult:
    """Evidently ``Report([DataDriftPreset(...)])`` of two DataFrames with the same columns. ``method`` and
    ``threshold``: the stattest for numerical columns (e.g. ``wasserstein`` with 0.2, ``ks`` with 0.01);
    None: Evidently's own choice (K-S up to 1000 reference rows, Wasserstein 0.1 beyond)."""
    report_cls, preset_cls = _evidently()
    preset = preset_cls(drift_share=drift_share, num_method=method, num_threshold=threshold)
    start = time.perf_counter()
    with warnings.catch_warnings():
        # a constant column in a window makes numpy's corrcoef divide by zero (Evidently still decides)
        warnings.filterwarnings(
            "ignore", message="invalid value encountered in divide", category=RuntimeWarning
        )
        warnings.filterwarnings("ignore", message="Degrees of freedom <= 0", category=RuntimeWarning)
        snapshot = report_cls([preset]).run(current_data=current, reference_data=reference)
        result = snapshot.dict()
    seconds = time.perf_counter() - start
    share, scores, methods, drifted = 0.0, {}, {}, []
    for metric in result.get("metrics", []):
        config = metric.get("config", {})
        kind = str(config.get("type", ""))
        value = metric.get("value")
        if kind.endswith("DriftedColumnsCount") and isinstance(value, dict):
            share = float(value.get("share", 0.0))
        elif kind.endswith("ValueDrift") and isinstance(value, int | float):
            column = str(config.get("column"))
            method = str(config.get("method", ""))
            threshold = float(config.get("threshold", 0.05))
            score = float(value)
            scores[column], methods[column] = score, method
            if (score >= threshold) if is_distance(method) else (score < threshold):
                drifted.append(column)
    return DriftResult(share >= drift_share, share, drifted, scores, methods, seconds)


_DISTANCES = (
    "wasserstein",
    "distance",
    "energy",
    "hellinger",
    "jensen",
    "kl_div",
    "kullback",
    "psi",
    "divergence",
)


def is_distance(method: str) -> bool:
    """Evidently's stattests give a distance (drift at or above the threshold: Wasserstein, PSI, Jensen-
    Shannon, Hellinger, KL, energy) or a p-value (drift below it: K-S, chi-square, Z, t, Anderson...)."""
    name = method.lower()
    return any(word in name for word in _DISTANCES)


DriftCheck = Callable[[Any, Any, float, "str | None", "float | None"], DriftResult]
"""``(reference, current, drift_share, method, threshold) -> DriftResult``: :func:`data_drift` or a
:class:`ProcessDriftCheck`."""


def _check_in_child(
    reference: Any, current: Any, drift_share: float, method: str | None, threshold: float | None
) -> DriftResult:
    return data_drift(reference, current, drift_share, method, threshold)


def _child_init() -> None:
    os.environ["DO_NOT_TRACK"] = "1"
    warnings.simplefilter("ignore")
    _evidently()


class ProcessDriftCheck:
    """Runs each Evidently check in one child process (spawned once, Evidently imported there): the
    check's seconds of pure-Python work then never hold the agent process's GIL, so inference threads keep
    their latency while a window is checked (``bench/online_drift.py`` measures both). A child that died is
    replaced on the next check."""

    def __init__(self, timeout: float = 300.0) -> None:
        self.timeout = timeout
        self._pool: Any = None
        self._lock = threading.Lock()

    def _executor(self) -> Any:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with self._lock:
            if self._pool is None:
                os.environ.setdefault("DO_NOT_TRACK", "1")
                self._pool = ProcessPoolExecutor(
                    max_workers=1, mp_context=multiprocessing.get_context("spawn"), initializer=_child_init
                )
            return self._pool

    def start(self) -> None:
        """Spawn the child now (it imports Evidently while the agent starts)."""
        self._executor().submit(int).result(timeout=self.timeout)

    def __call__(
        self, reference: Any, current: Any, drift_share: float, method: str | None, threshold: float | None
    ) -> DriftResult:
        from concurrent.futures.process import BrokenProcessPool

        pool = self._executor()
        try:
            result: DriftResult = pool.submit(
                _check_in_child, reference, current, drift_share, method, threshold
            ).result(timeout=self.timeout)
        except BrokenProcessPool:
            self.close()
            raise
        return result

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


class WindowedDataDrift:
    """Sliding windows of feature rows; each full window (every ``step`` rows once ``window`` rows are
    in) is checked against the reference."""

    def __init__(
        self,
        reference: Any,
        window: int = 96,
        step: int | None = None,
        drift_share: float = 0.5,
        method: str | None = None,
        threshold: float | None = None,
        check: DriftCheck = data_drift,
    ) -> None:
        if window < 2:
            raise ValueError("a drift window needs at least 2 rows")
        self.reference = reference
        self.columns: list[str] = [str(c) for c in reference.columns]
        self.window, self.step = window, step or window
        if not 1 <= self.step <= window:
            raise ValueError("the step is between 1 and the window size")
        self.drift_share, self.method, self.threshold = drift_share, method, threshold
        self.check = check
        self._rows: deque[np.ndarray] = deque(maxlen=window)
        self._since = 0
        self.windows = 0

    @property
    def width(self) -> int:
        return len(self.columns)

    def add(self, rows: np.ndarray) -> list[DriftResult]:
        """Add feature rows (shape (n, width)); returns the checks that became due."""
        import pandas as pd

        if rows.ndim != 2 or rows.shape[1] != self.width:
            raise ValueError(f"rows of {rows.shape[-1]} features; the reference has {self.width}")
        results = []
        for row in rows:
            self._rows.append(row)
            self._since += 1
            if len(self._rows) == self.window and self._since >= self.step:
                self._since = 0
                current = pd.DataFrame(np.stack(self._rows), columns=self.columns)
                result = self.check(self.reference, current, self.drift_share, self.method, self.threshold)
                results.append(
                    DriftResult(
                        result.detected,
                        result.share,
                        result.drifted,
                        result.scores,
                        result.methods,
                        result.seconds,
                        self.windows,
                    )
                )
                self.windows += 1
        return results


@dataclass
class ErrorStreamDetector:
    """ADWIN and Page-Hinkley (River) on normalised prediction errors ``(y - y_hat) / scale``."""

    calibration: int = 96
    ph_threshold: float = 50.0
    ph_delta: float = 0.25
    adwin_delta: float = 0.002
    detectors: Sequence[DriftDetector] = (DriftDetector.ADWIN, DriftDetector.PAGE_HINKLEY)
    seen: int = 0
    _calibrating: list[float] = field(default_factory=list)
    scale: float | None = None

    def __post_init__(self) -> None:
        try:
            from river import drift
        except ImportError as exc:
            raise MonitorUnavailable("error-stream drift needs the monitor extra (river)") from exc
        self._drift = drift
        self._reset()

    def _reset(self) -> None:
        self._adwin = self._drift.ADWIN(delta=self.adwin_delta)  # type: ignore[no-untyped-call]
        self._ph = self._drift.PageHinkley(min_instances=30, delta=self.ph_delta, threshold=self.ph_threshold)

    def update(self, error: float) -> list[DriftDetector]:
        """Feed one error; returns the detectors that fired on it (both restart after a detection)."""
        self.seen += 1
        if self.scale is None:
            self._calibrating.append(abs(error))
            if len(self._calibrating) >= self.calibration:
                mae = float(np.mean(self._calibrating))
                self.scale = mae if mae > 0 else 1.0
            return []
        value = error / self.scale
        fired = []
        if DriftDetector.ADWIN in self.detectors:
            self._adwin.update(value)  # type: ignore[no-untyped-call]
            if self._adwin.drift_detected:
                fired.append(DriftDetector.ADWIN)
        if DriftDetector.PAGE_HINKLEY in self.detectors:
            self._ph.update(value)  # type: ignore[no-untyped-call]
            if self._ph.drift_detected:
                fired.append(DriftDetector.PAGE_HINKLEY)
        return fired
