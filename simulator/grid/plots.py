"""PNG plots (matplotlib's Agg canvas; no display and no global backend switch)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from simulator.grid.errors import MissingExtraError
from simulator.grid.evaluate import EpisodeResult, EvaluationReport
from simulator.grid.powerflow import FloatArray


def _figure(width: float, height: float) -> tuple[object, object]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise MissingExtraError("matplotlib") from exc
    figure = Figure(figsize=(width, height), dpi=100)
    return figure, FigureCanvasAgg(figure)


def plot_day(
    path: Path,
    day: int,
    load_before_mw: FloatArray,
    generation_mw: FloatArray,
    load_after_mw: FloatArray | None = None,
    *,
    title: str = "",
) -> Path:
    """Total demand before (and after) shifting and PV generation over the day's 96 slots."""
    figure, canvas = _figure(9.0, 4.2)
    ax = figure.add_subplot(1, 1, 1)  # type: ignore[attr-defined]
    hours = np.arange(len(load_before_mw)) * 24.0 / len(load_before_mw)
    ax.fill_between(hours, generation_mw, step="post", color="#f4c542", alpha=0.45, label="PV generation")
    ax.step(hours, load_before_mw, where="post", color="#444444", linestyle="--", label="demand, no shift")
    if load_after_mw is not None:
        ax.step(hours, load_after_mw, where="post", color="#1f6fb4", linewidth=1.8, label="demand, shifted")
    ax.set_xlim(0, 24)
    ax.set_xticks(range(0, 25, 3))
    ax.set_xlabel("hour of day")
    ax.set_ylabel("MW")
    ax.set_title(title or f"day {day}")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    figure.tight_layout()  # type: ignore[attr-defined]
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.print_png(str(path))  # type: ignore[attr-defined]
    return path


def plot_episode(path: Path, result: EpisodeResult) -> Path:
    title = (
        f"day {result.day}: (SCR+SSR)/2 {result.before.score:.3f} -> {result.after.score:.3f}"
        f" ({result.policy})"
    )
    return plot_day(
        path, result.day, result.load_before_mw, result.generation_mw, result.load_after_mw, title=title
    )


def plot_report(path: Path, report: EvaluationReport, methods: Sequence[str] | None = None) -> Path:
    """Per-day (SCR+SSR)/2 of every method over the evaluated days."""
    figure, canvas = _figure(9.0, 4.2)
    ax = figure.add_subplot(1, 1, 1)  # type: ignore[attr-defined]
    for name in methods or report.methods():
        ax.plot(report.days, report.scores[name], marker=".", linewidth=1.0, label=name)
    ax.set_xlabel("day of 2016")
    ax.set_ylabel("(SCR + SSR) / 2")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    figure.tight_layout()  # type: ignore[attr-defined]
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.print_png(str(path))  # type: ignore[attr-defined]
    return path
