"""Interleaved call timing shared by the inference benchmarks (``inference.py``, ``agent_inference.py``).

Every runner is timed on the same batches, round by round, alternating the order of the runners each round
so that machine noise hits all of them alike. One ``Timing`` per (runner, batch size)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Timing", "measure_interleaved"]


@dataclass
class Timing:
    """Seconds per call of one runner at one batch size."""

    batch: int
    calls: list[float] = field(default_factory=list)

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.calls) * 1000

    @property
    def p95_ms(self) -> float:
        return float(np.percentile(self.calls, 95)) * 1000

    @property
    def throughput(self) -> float:
        """Samples per second over all timed calls."""
        return self.batch * len(self.calls) / sum(self.calls)


def measure_interleaved(
    runners: Mapping[str, Callable[[Any], Any]],
    x: Any,
    calls: Mapping[int, int],
    rounds: int,
    *,
    batches: Sequence[int],
    warmup: int,
    seed: int = 0,
) -> dict[tuple[str, int], Timing]:
    """Time each runner at each batch size on random rows of ``x`` (drawn without replacement per batch,
    ``calls[b]`` batches of size ``b``). Every runner first runs the first ``warmup`` batches untimed;
    then each round times every runner on all batches, the order of runners reversed every other round."""
    rng = np.random.default_rng(seed)
    timings = {(name, b): Timing(b) for name in runners for b in batches}
    for b in batches:
        inputs = [np.ascontiguousarray(x[rng.choice(len(x), b, replace=False)]) for _ in range(calls[b])]
        for run in runners.values():
            for batch in inputs[:warmup]:
                run(batch)
        for round_ in range(rounds):
            order = list(runners) if round_ % 2 == 0 else list(reversed(list(runners)))
            for name in order:
                run, timing = runners[name], timings[(name, b)]
                for batch in inputs:
                    started = time.perf_counter()
                    run(batch)
                    timing.calls.append(time.perf_counter() - started)
    return timings
