"""Generated streams for the online-learning tests (seeded, so every run sees the same data)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np

START = 1_700_006_400  # a multiple of 900 s (2023-11-15T00:00:00Z)


def linear_stream(n: int, width: int = 5, seed: int = 0, noise: float = 0.1) -> Iterator[dict[str, Any]]:
    """``{"x": [...], "y": w.x + 5 + noise}`` with features around 10."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=width)
    for _ in range(n):
        x = rng.normal(size=width) * 3 + 10
        yield {"x": x.tolist(), "y": float(x @ w + 5 + rng.normal() * noise)}


def class_stream(n: int, width: int = 4, seed: int = 0) -> Iterator[dict[str, Any]]:
    """Two separable classes ``"low"`` / ``"high"`` (the sign of w.x)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=width)
    for _ in range(n):
        x = rng.normal(size=width)
        yield {"x": x.tolist(), "y": "high" if x @ w > 0 else "low"}


def meter_value(ts: float, rng: np.random.Generator, level: float = 1.0) -> float:
    """Daily consumption curve (kW) with noise."""
    day = 2 * math.pi * (ts % 86400) / 86400
    return level * (1.0 + 0.5 * math.sin(day) + 0.2 * math.sin(3 * day)) + float(rng.normal() * 0.03)


def meter_stream(n: int, seed: int = 0, start: int = START, interval: int = 900) -> Iterator[dict[str, Any]]:
    """``{"timestamp": ISO 8601, "consumption": kW}`` every ``interval`` seconds (UC10's stream)."""
    from datetime import UTC, datetime

    rng = np.random.default_rng(seed)
    for i in range(n):
        ts = start + i * interval
        yield {"timestamp": datetime.fromtimestamp(ts, UTC).isoformat(), "consumption": meter_value(ts, rng)}
