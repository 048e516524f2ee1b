"""Baselines and the evaluation protocol."""

from __future__ import annotations

import numpy as np
import pytest

from simulator.grid.env import LoadShiftEnv
from simulator.grid.evaluate import NO_SHIFT, evaluate, run_episode
from simulator.grid.model import GridModel, hourly
from simulator.grid.policies import NoShift, PvPeakHeuristic, SurplusBoundaryRule


def test_heuristic_moves_controllable_demand_toward_the_pv_peak(model: GridModel, summer_day: int) -> None:
    env = LoadShiftEnv(model, days=(summer_day,), actions_per_day=48)
    result = run_episode(env, PvPeakHeuristic(), summer_day)
    sim = env.simulation
    peak = int(np.argmax(hourly(result.generation_mw)))
    hours = np.arange(24)
    controllable = list(model.controllable_indices)

    def distance_to_peak(p_load: np.ndarray) -> float:
        demand = hourly(p_load[:, controllable]).sum(axis=1)
        return float(np.sum(demand * np.abs(hours - peak)) / demand.sum())

    assert distance_to_peak(sim.p_load) < distance_to_peak(sim.initial_p_load)
    np.testing.assert_allclose(sim.p_load.sum(axis=0), sim.initial_p_load.sum(axis=0), rtol=1e-12)
    assert result.after.score > result.before.score  # a sunny day: moving demand to noon helps


def test_no_shift_policy_leaves_the_day_unchanged(model: GridModel, summer_day: int) -> None:
    env = LoadShiftEnv(model, days=(summer_day,), actions_per_day=5)

    result = run_episode(env, NoShift(), summer_day)

    assert result.after == result.before
    assert np.array_equal(result.load_after_mw, result.load_before_mw)


def test_evaluation_reports_no_shift_and_each_policy_per_day(model: GridModel) -> None:
    days = model.test_days()[30:33]
    env = LoadShiftEnv(model, days=days, actions_per_day=10)
    seen: list[int] = []

    report = evaluate(env, [PvPeakHeuristic(), NoShift()], days, progress=seen.append)

    assert report.methods() == [NO_SHIFT, "heuristic", "no-op"]
    assert report.scores["no-op"] == report.scores[NO_SHIFT]
    assert len(seen) == len(days)
    for day, base in zip(days, report.scores[NO_SHIFT], strict=True):
        env.reset(options={"day": day})
        assert base == env.simulation.initial_metrics.score
    s = report.summary("heuristic")
    values = np.asarray(report.scores["heuristic"])
    assert s.mean == pytest.approx(values.mean()) and s.std == pytest.approx(values.std())
    assert s.gain_vs_no_shift == pytest.approx(values.mean() / np.mean(report.scores[NO_SHIFT]) - 1)
    np.testing.assert_allclose(
        report.per_day_gain("heuristic"), values / np.asarray(report.scores[NO_SHIFT]) - 1
    )


def test_boundary_rule_fills_exporting_hours_from_importing_neighbours(
    model: GridModel, summer_day: int
) -> None:
    env = LoadShiftEnv(model, days=(summer_day,), actions_per_day=30)
    env.reset(options={"day": summer_day})
    sim = env.simulation
    rule = SurplusBoundaryRule()
    exchange = -hourly(sim.p_ext)

    shift = env.codec.decode(rule.act(env.observation(), env))

    assert exchange[shift.hour] < 0 < exchange[shift.target_hour]
    result = run_episode(env, rule, summer_day)
    assert result.after.export_mwh < result.before.export_mwh
    assert result.after.score > result.before.score
