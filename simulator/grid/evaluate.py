"""Evaluation on held-out days: the day's final (SCR + SSR) / 2 after an episode of shifts, per method."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from simulator.grid.env import LoadShiftEnv
from simulator.grid.metrics import DayMetrics
from simulator.grid.policies import Policy
from simulator.grid.powerflow import FloatArray

NO_SHIFT = "no-shift"


@dataclass(frozen=True)
class EpisodeResult:
    """One day under one policy: metrics before and after, and the load/PV curves for plots."""

    day: int
    policy: str
    before: DayMetrics
    after: DayMetrics
    load_before_mw: FloatArray
    load_after_mw: FloatArray
    generation_mw: FloatArray


def run_episode(env: LoadShiftEnv, policy: Policy, day: int) -> EpisodeResult:
    """Play a full episode of ``policy`` on ``day``; the day's metrics after the last shift count."""
    obs, _ = env.reset(options={"day": day})
    policy.reset(env)
    sim = env.simulation
    before = sim.initial_metrics
    load_before = sim.load_total()
    terminated = truncated = False
    while not (terminated or truncated):
        obs, _, terminated, truncated, _ = env.step(policy.act(obs, env))
    return EpisodeResult(
        day, policy.name, before, sim.metrics(), load_before, sim.load_total(), sim.generation()
    )


@dataclass(frozen=True)
class MethodSummary:
    name: str
    mean: float
    std: float
    min: float
    max: float
    gain_vs_no_shift: float
    """Relative gain of the mean score over the no-shift mean score (0.05 = +5 %)."""


@dataclass
class EvaluationReport:
    days: tuple[int, ...]
    scores: dict[str, list[float]]
    episodes: dict[str, list[EpisodeResult]] = field(default_factory=dict)

    def summary(self, name: str) -> MethodSummary:
        values = np.asarray(self.scores[name])
        base = float(np.mean(self.scores[NO_SHIFT]))
        mean = float(values.mean())
        return MethodSummary(
            name, mean, float(values.std()), float(values.min()), float(values.max()), mean / base - 1.0
        )

    def per_day_gain(self, name: str) -> FloatArray:
        """Relative gain over no-shift for every day."""
        out: FloatArray = np.asarray(self.scores[name]) / np.asarray(self.scores[NO_SHIFT]) - 1.0
        return out

    def wins(self, name: str, other: str) -> int:
        """Days on which ``name`` ends with a higher score than ``other``."""
        return int(np.sum(np.asarray(self.scores[name]) > np.asarray(self.scores[other])))

    def methods(self) -> list[str]:
        return list(self.scores)


def evaluate(
    env: LoadShiftEnv,
    policies: Sequence[Policy],
    days: Sequence[int],
    *,
    progress: Callable[[int], None] | None = None,
    keep_episodes: bool = False,
) -> EvaluationReport:
    """Scores of no-shift and of every policy on ``days`` (same env settings for all)."""
    scores: dict[str, list[float]] = {NO_SHIFT: []}
    episodes: dict[str, list[EpisodeResult]] = {}
    for policy in policies:
        scores[policy.name] = []
        episodes[policy.name] = []
    for day in days:
        if not policies:
            env.reset(options={"day": day})
            scores[NO_SHIFT].append(env.simulation.initial_metrics.score)
        for k, policy in enumerate(policies):
            result = run_episode(env, policy, day)
            if k == 0:
                scores[NO_SHIFT].append(result.before.score)
            scores[policy.name].append(result.after.score)
            if keep_episodes:
                episodes[policy.name].append(result)
        if progress is not None:
            progress(1)
    return EvaluationReport(tuple(days), scores, episodes)
