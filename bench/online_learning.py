"""Learning quality of the UC10 forecaster (seed 2.1.3.1) on real SimBench profiles, measured in one run:

* ``mape_gain_vs_seasonal_naive``: 1 - MAPE_GRU / MAPE_seasonal-naive on the held-out month (November;
  train January-September, validation October), forecasting the value 96 steps (24 h) after the last of
  36 inputs;
* ``transfer``: pre-trained on a source profile, first GRU layer frozen, fine-tuned on the last days of the
  target's training months, vs the same network from scratch on the same days: the target days (and the
  epochs) the transferred model needs to reach the from-scratch model's validation MSE;
* the 90 % Gaussian interval's coverage on the held-out month and the normality p-values of the
  validation residuals (the seed's Table 4);
* IntegratedGradients vs DeepLift convergence deltas on the trained forecaster.

Plots (PNG) go to ``--plots`` (default ``docs/img``); the last line is a one-line JSON summary.

    python bench/online_learning.py [--quick] [--target lv_rural1] [--source lv_urban6] [--plots DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_agent.learning import forecast as fc
from edge_agent.learning.explain import explain

ROOT = Path(__file__).resolve().parents[1]
TARGET, SOURCE = "lv_rural1", "lv_urban6"


def _settings(quick: bool) -> dict[str, Any]:
    if quick:
        return {
            "main": fc.FitConfig(epochs=4, max_samples=4000),
            "pretrain": fc.FitConfig(epochs=3, max_samples=4000),
            "transfer": fc.FitConfig(epochs=8),
            "days": (7.0, 14.0),
        }
    return {
        "main": fc.FitConfig(epochs=20, max_samples=8000),
        "pretrain": fc.FitConfig(epochs=10, max_samples=8000),
        "transfer": fc.FitConfig(epochs=30),
        "days": (3.5, 7.0, 14.0, 28.0),
    }


def _r(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)


def measure(
    quick: bool,
    *,
    target: str = TARGET,
    source: str = SOURCE,
    source_kind: str = "load",
    plots: Path | None = None,
) -> dict[str, Any]:
    """Every number of this bench as a dict (the combined ``bench/online.py`` imports this)."""
    import torch

    torch.set_num_threads(1)  # 2 shared cores; reproducible
    settings = _settings(quick)
    started = time.perf_counter()
    series = fc.profile_series(target)
    forecaster, report = fc.evaluate_forecaster(series, settings["main"])
    main_s = time.perf_counter() - started

    started = time.perf_counter()
    kind: Literal["load", "generation"] = "generation" if source_kind == "generation" else "load"
    transfer = fc.transfer_comparison(
        fc.profile_series(source, kind),
        series,
        days=settings["days"],
        config=settings["transfer"],
        pretrain_config=settings["pretrain"],
    )
    transfer_s = time.perf_counter() - started

    _, _, _, test = fc.split_series(series)
    sample = test.subset(np.arange(0, len(test), max(1, len(test) // 16))[:16])
    inputs = forecaster.model_inputs(sample.x)
    ig = explain(forecaster.model, inputs, "integrated_gradients")
    dl = explain(forecaster.model, inputs, "deeplift")

    summary: dict[str, Any] = {
        "bench": "online_learning",
        "quick": quick,
        "target": target,
        "mape_model": _r(report.mape_model),
        "mape_seasonal_naive": _r(report.mape_seasonal_naive),
        "mape_gain_vs_seasonal_naive": _r(report.mape_gain_vs_seasonal_naive),
        "val_mse_log_scaled": _r(report.history.val_mse[-1] if report.history.val_mse else None),
        "samples": report.samples,
        "epochs": settings["main"].epochs,
        "samples_per_epoch": report.history.samples_per_epoch,
        "interval_level": report.interval_level,
        "coverage_gaussian": _r(report.coverage_gaussian),
        "coverage_empirical": _r(report.coverage_empirical),
        "normality_p": {k: float(f"{v:.3g}") for k, v in report.normality_p.items()},
        "transfer": {
            "source": f"{source} ({kind})",
            "days": transfer.days,
            "samples": transfer.samples,
            "scratch_val_mse": [_r(v) for v in transfer.scratch_val_mse],
            "transfer_val_mse": [_r(v) for v in transfer.transfer_val_mse],
            "reference_days": transfer.reference_days,
            "days_needed": transfer.days_needed,
            "data_ratio": _r(transfer.data_ratio, 3),
            "epochs": len(transfer.scratch_curve),
            "epochs_needed": transfer.epochs_needed,
            "epochs_ratio": _r(transfer.epochs_ratio, 3),
        },
        "explain_delta": {
            "integrated_gradients": float(f"{ig['delta']:.3g}"),
            "deeplift": float(f"{dl['delta']:.3g}"),
        },
        "seconds": {"forecaster": round(main_s, 1), "transfer": round(transfer_s, 1)},
    }
    if plots is not None:
        summary["plots"] = [
            str(p)
            for p in (
                _plot_forecast(plots / "forecast-interval.png", forecaster, test, series),
                _plot_transfer(plots / "transfer-curves.png", transfer, target, source),
                _plot_attributions(plots / "forecast-attributions.png", forecaster, test),
            )
        ]
    return summary


# ---------------------------------------------------------------------------------------------- plots


def _figure(width: float, height: float) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=80)
    return figure, FigureCanvasAgg(figure)


def _save(figure: Any, canvas: Any, path: Path) -> Path:
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.print_png(str(path))
    return path


def _plot_forecast(path: Path, forecaster: fc.Forecaster, test: fc.WindowedData, series: np.ndarray) -> Path:
    week = test.subset(np.arange(min(len(test), 7 * fc.SLOTS_PER_DAY)))
    y_hat, lower, upper = forecaster.predict_interval(week.x)
    naive = fc.seasonal_naive(series, week.target_index)
    hours = (week.target_index - week.target_index[0]) / 4.0
    figure, canvas = _figure(9.0, 3.4)
    ax = figure.add_subplot(1, 1, 1)
    ax.fill_between(hours, lower, upper, color="#1f6fb4", alpha=0.2, label="90 % interval")
    ax.plot(hours, week.y, color="#e07b00", linewidth=1.0, label="actual")
    ax.plot(hours, y_hat, color="#1f6fb4", linewidth=1.2, label="GRU, 24 h ahead")
    ax.plot(hours, naive, color="#777777", linewidth=0.8, linestyle=":", label="seasonal naive")
    ax.set_xlabel("hours into the held-out month")
    ax.set_ylabel("relative load")
    ax.set_title("first week of the held-out month (November)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper right", ncol=4)
    return _save(figure, canvas, path)


def _plot_transfer(path: Path, report: fc.TransferReport, target: str, source: str) -> Path:
    figure, canvas = _figure(9.0, 3.4)
    left, right = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    left.plot(report.days, report.scratch_val_mse, "o-", color="#777777", label="from scratch")
    left.plot(report.days, report.transfer_val_mse, "o-", color="#1f6fb4", label=f"transfer from {source}")
    left.axhline(report.target, color="#777777", linewidth=0.7, linestyle="--")
    left.set_xscale("log", base=2)
    left.set_xticks(report.days, [f"{d:g}" for d in report.days])
    left.set_xlabel(f"target ({target}) training days")
    left.set_ylabel("validation MSE (best epoch)")
    left.grid(alpha=0.3)
    left.legend(fontsize=7)
    epochs = np.arange(1, len(report.scratch_curve) + 1)
    right.plot(epochs, report.scratch_curve, color="#777777", label="from scratch")
    right.plot(epochs, report.transfer_curve, color="#1f6fb4", label="transfer (GRU 1 frozen)")
    right.set_xlabel(f"epoch ({report.reference_days:g} target days)")
    right.set_ylabel("validation MSE")
    right.grid(alpha=0.3)
    right.legend(fontsize=7)
    return _save(figure, canvas, path)


def _plot_attributions(path: Path, forecaster: fc.Forecaster, test: fc.WindowedData) -> Path:
    one = test.x[len(test) // 2]
    result = explain(forecaster, one, "integrated_gradients")
    power = np.asarray(result["attributions"])[:, 0]
    colors = [
        "#2e9e44"
        if a > 0.05 * np.abs(power).max()
        else "#d62728"
        if a < -0.05 * np.abs(power).max()
        else "#e8c400"
        for a in power
    ]
    figure, canvas = _figure(9.0, 3.0)
    ax = figure.add_subplot(1, 1, 1)
    ax.bar(np.arange(1, len(power) + 1), power, color=colors)
    ax.set_xlabel("input sample (1 = oldest, 36 = most recent)")
    ax.set_ylabel("attribution")
    ax.set_title(f"IntegratedGradients for one 24 h-ahead forecast (delta {result['delta']:.1e})")
    ax.grid(alpha=0.3, axis="y")
    return _save(figure, canvas, path)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short training (about 2 minutes on 2 cores)")
    parser.add_argument("--target", default=TARGET, help="SimBench load profile to forecast")
    parser.add_argument("--source", default=SOURCE, help="SimBench profile to pre-train on")
    parser.add_argument("--source-kind", choices=("load", "generation"), default="load")
    parser.add_argument("--plots", type=Path, default=ROOT / "docs" / "img", help="folder for the PNGs")
    args = parser.parse_args()
    os.environ.setdefault("DO_NOT_TRACK", "1")
    s = measure(
        args.quick, target=args.target, source=args.source, source_kind=args.source_kind, plots=args.plots
    )
    t = s["transfer"]
    print(f"target {s['target']}: {s['samples']} samples (train/val/test), {s['epochs']} epochs")
    print(
        f"  held-out month MAPE: GRU {s['mape_model']:.4f} vs seasonal naive {s['mape_seasonal_naive']:.4f}"
        f" -> gain {s['mape_gain_vs_seasonal_naive']:+.1%} (goal >= +10 %)"
    )
    print(
        f"  90 % interval coverage: Gaussian {s['coverage_gaussian']:.3f}, empirical quantiles "
        f"{s['coverage_empirical']:.3f}; normality p {s['normality_p']}"
    )
    print(f"  transfer from {t['source']}, days {t['days']} (samples {t['samples']}):")
    print(f"    from scratch val MSE {t['scratch_val_mse']}")
    print(f"    transfer     val MSE {t['transfer_val_mse']}")
    print(
        f"    reaches scratch@{t['reference_days']:g} d with {t['days_needed']} d (ratio {t['data_ratio']}); "
        f"epochs {t['epochs_needed']}/{t['epochs']} (ratio {t['epochs_ratio']}) (goal <= 0.5 either)"
    )
    print(f"  explanation deltas: {s['explain_delta']}")
    for p in s.get("plots", []):
        print(f"  plot: {p}")
    print(json.dumps(s))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
