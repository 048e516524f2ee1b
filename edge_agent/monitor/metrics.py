"""Prediction-quality statistics (ME, MAE, MAPE, bias) and the agent's Prometheus metrics.

:class:`ErrorStats` accumulates the seed's performance metrics over a window (numpy only):
``ME = mean(y - y_hat)``, ``MAE = mean(|y - y_hat|)``, ``MAPE = mean(|(y - y_hat) / y|)`` over the
samples with ``y != 0`` (a zero actual has no percentage error; they are counted apart), and the bias:
the share of over-estimates (``y_hat > y``) minus the share of under-estimates, in [-1, 1], with the mean
amount of each.

:class:`AgentMetrics` holds every metric the agent exports, in its own ``CollectorRegistry`` (never the
process-global one), so a test or a bench can scrape exactly what ``GET /metrics`` serves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
CHECK_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class ErrorStats:
    """Running sums over one window of (actual, predicted) pairs; :meth:`summary` gives the metrics."""

    n: int = 0
    sum_error: float = 0.0
    sum_abs: float = 0.0
    sum_ape: float = 0.0
    n_ape: int = 0
    over: int = 0
    under: int = 0
    over_amount: float = 0.0
    under_amount: float = 0.0

    def add(self, y_true: Any, y_pred: Any) -> int:
        """Add pairs (scalars or arrays of one shape); non-finite pairs are skipped. Returns how many
        were added."""
        t = np.asarray(y_true, dtype=np.float64).ravel()
        p = np.asarray(y_pred, dtype=np.float64).ravel()
        if t.shape != p.shape:
            raise ValueError(f"y_true has {t.size} values, y_pred {p.size}")
        keep = np.isfinite(t) & np.isfinite(p)
        t, p = t[keep], p[keep]
        if t.size == 0:
            return 0
        err = t - p  # > 0: under-estimate, < 0: over-estimate
        self.n += int(t.size)
        self.sum_error += float(err.sum())
        self.sum_abs += float(np.abs(err).sum())
        nz = t != 0
        self.n_ape += int(nz.sum())
        self.sum_ape += float(np.abs(err[nz] / t[nz]).sum())
        over, under = err < 0, err > 0
        self.over += int(over.sum())
        self.under += int(under.sum())
        self.over_amount += float(-err[over].sum())
        self.under_amount += float(err[under].sum())
        return int(t.size)

    def merge(self, other: ErrorStats) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def summary(self) -> dict[str, float]:
        """me, mae, mape (a fraction: 0.1 = 10 %), bias (over share - under share), over/under shares and
        mean amounts, n. NaN where a metric has no samples (an empty window)."""
        nan = math.nan
        n = self.n
        return {
            "n": float(n),
            "me": self.sum_error / n if n else nan,
            "mae": self.sum_abs / n if n else nan,
            "mape": self.sum_ape / self.n_ape if self.n_ape else nan,
            "bias": (self.over - self.under) / n if n else nan,
            "over_share": self.over / n if n else nan,
            "under_share": self.under / n if n else nan,
            "over_amount": self.over_amount / self.over if self.over else 0.0,
            "under_amount": self.under_amount / self.under if self.under else 0.0,
        }


def prometheus_available() -> str | None:
    """None when prometheus-client is installed, else the install hint."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return "agent monitoring needs the monitor extra: pip install 'fedge[agent,monitor]'"
    return None


MODEL = ("model_id", "version")


class AgentMetrics:
    """The agent's metrics in one registry (names are what the Grafana dashboards query)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.inference_seconds = Histogram(
            "fedge_agent_inference_seconds",
            "Inference latency on the device (model call only), by model version",
            MODEL,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.active_model = Gauge(
            "fedge_agent_active_model",
            "1 for the model version the agent serves",
            (*MODEL, "sha256"),
            registry=r,
        )
        self.drift_detected = Gauge(
            "fedge_agent_drift_detected",
            "Dataset drift flag of the newest window (Evidently DataDriftPreset): 1 drifted, 0 not",
            MODEL,
            registry=r,
        )
        self.drift_share = Gauge(
            "fedge_agent_drift_share", "Share of drifted features in the newest window", MODEL, registry=r
        )
        self.feature_score = Gauge(
            "fedge_agent_drift_feature_score",
            "Per-feature drift score of the newest window (p-value or distance, see 'method')",
            (*MODEL, "feature", "method"),
            registry=r,
        )
        self.feature_drifted = Gauge(
            "fedge_agent_drift_feature_drifted",
            "1 when the feature drifted in the newest window",
            (*MODEL, "feature"),
            registry=r,
        )
        self.drift_checks = Counter(
            "fedge_agent_drift_checks", "Data-drift checks run (windows)", MODEL, registry=r
        )
        self.drift_alarms = Counter(
            "fedge_agent_drift_alarms", "Drift alarms raised, by detector", (*MODEL, "detector"), registry=r
        )
        self.drift_check_seconds = Histogram(
            "fedge_agent_drift_check_seconds",
            "Time of one data-drift check",
            buckets=CHECK_BUCKETS,
            registry=r,
        )
        self.errors = {
            name: Gauge(f"fedge_agent_prediction_{name}", doc, MODEL, registry=r)
            for name, doc in (
                ("me", "Mean error (actual - predicted) over the newest window"),
                ("mae", "Mean absolute error over the newest window"),
                ("mape", "Mean absolute percentage error over the newest window (fraction)"),
                ("bias", "Share of over-estimates minus share of under-estimates, newest window"),
                ("over_share", "Share of over-estimates (predicted > actual), newest window"),
                ("under_share", "Share of under-estimates (predicted < actual), newest window"),
                ("over_amount", "Mean amount of the over-estimates, newest window"),
                ("under_amount", "Mean amount of the under-estimates, newest window"),
            )
        }
        self.labelled = Counter(
            "fedge_agent_labelled_predictions", "Predictions with a known actual value", MODEL, registry=r
        )
        self.observations = Counter(
            "fedge_agent_monitor_observations", "Observations the monitor processed", registry=r
        )
        self.dropped = Counter(
            "fedge_agent_monitor_dropped",
            "Observations dropped because the monitor queue was full",
            registry=r,
        )
        self.rejected = Counter(
            "fedge_agent_monitor_rejected",
            "Observations the monitor could not use (bad shapes, feature count unlike the reference)",
            registry=r,
        )
        self.queue_depth = Gauge("fedge_agent_monitor_queue_depth", "Observations waiting", registry=r)

    def set_active(self, model_id: str | None, version: int | None, sha256: str | None) -> None:
        self.active_model.clear()
        if model_id is not None:
            self.active_model.labels(model_id, str(version), sha256 or "").set(1)

    def set_errors(self, model_id: str, version: int, summary: dict[str, float]) -> None:
        for name, gauge in self.errors.items():
            value = summary.get(name, math.nan)
            if not math.isnan(value):
                gauge.labels(model_id, str(version)).set(value)

    def exposition(self) -> bytes:
        """The text format ``GET /metrics`` serves."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry)
