"""Env steps/s of the incremental fast path vs naive full-day re-simulation with pandapower.

Both paths replay the same action sequence on the same day:

* fast:  ``LoadShiftEnv.step`` - only the 8 slots an action touches are solved again (compiled Newton
  solver), the other 88 come from the cache;
* naive: the same shift, then all 96 slots solved again with ``pandapower.runpp``.

The exactness check compares every naive step's reward and score with the fast path's (``exact`` is true
when they agree within 1e-9), and checks that incremental and full-day re-simulation with the same fast
solver agree bit for bit. The last line is a one-line JSON summary.

    python bench/grid.py [--quick] [--lightsim2grid]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from simulator.grid.env import LoadShiftEnv
from simulator.grid.model import GridModel
from simulator.grid.simulation import DaySimulation

TOLERANCE = 1e-9


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="few steps (about 20 s)")
    parser.add_argument("--day", type=int, default=None, help="day of 2016 (default: a June test day)")
    parser.add_argument("--steps", type=int, default=None, help="fast-path steps")
    parser.add_argument("--naive-steps", type=int, default=None, help="naive steps (96 runpp each)")
    parser.add_argument("--lightsim2grid", action="store_true", help="also time pandapower + lightsim2grid")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    steps = args.steps or (400 if args.quick else 4000)
    naive_steps = args.naive_steps or (3 if args.quick else 15)

    model = GridModel()
    day = args.day if args.day is not None else next(d for d in model.test_days() if d >= 152)
    env = LoadShiftEnv(model, days=(day,), actions_per_day=steps, reward="improvement")
    rng = np.random.default_rng(args.seed)
    actions = [rng.integers(0, env.codec.nvec) for _ in range(steps)]

    # Warm up: compile / load the numba kernel and pandapower's first call.
    env.reset(options={"day": day})
    env.step(actions[0])
    reference = model.reference_solver()
    reference.solve(
        *(a[:1] for a in (env.simulation.p_load, env.simulation.q_load, env.simulation.p_pv)), [0]
    )

    # Fast path.
    env.reset(options={"day": day})
    fast_rewards: list[float] = []
    fast_scores: list[float] = []
    start = time.perf_counter()
    for action in actions:
        _, reward, _, _, info = env.step(action)
        fast_rewards.append(reward)
        fast_scores.append(info["score"])
    fast_seconds = time.perf_counter() - start
    fast_rate = steps / fast_seconds

    # Same fast solver, full-day re-simulation after every action: must match bit for bit.
    full = DaySimulation(model, day, model.fast_solver())
    bitwise = True
    for k, action in enumerate(actions):
        shift = env.codec.decode(action)
        full.shift(model.controllable_indices[shift.load], shift, resolve=False)
        full.resimulate()
        if full.metrics().score != fast_scores[k]:
            bitwise = False
            break

    def naive_run(solver_kwargs: dict[str, bool]) -> tuple[float, list[float], list[float]]:
        solver = model.reference_solver(**solver_kwargs)
        sim = DaySimulation(model, day, solver)
        previous = sim.metrics().score
        rewards: list[float] = []
        scores: list[float] = []
        begin = time.perf_counter()
        for action in actions[:naive_steps]:
            shift = env.codec.decode(action)
            sim.shift(model.controllable_indices[shift.load], shift, resolve=False)
            sim.resimulate()
            score = sim.metrics().score
            rewards.append(score - previous)
            scores.append(score)
            previous = score
        return naive_steps / (time.perf_counter() - begin), rewards, scores

    naive_rate, naive_rewards, naive_scores = naive_run({})
    reward_diff = float(np.max(np.abs(np.asarray(naive_rewards) - np.asarray(fast_rewards[:naive_steps]))))
    score_diff = float(np.max(np.abs(np.asarray(naive_scores) - np.asarray(fast_scores[:naive_steps]))))
    exact = reward_diff <= TOLERANCE and score_diff <= TOLERANCE and bitwise

    summary: dict[str, object] = {
        "bench": "grid",
        "day": day,
        "fast_solver": model.fast_solver().name,
        "naive_solver": "pandapower.runpp",
        "fast_steps": steps,
        "naive_steps": naive_steps,
        "fast_steps_per_s": round(fast_rate, 1),
        "naive_steps_per_s": round(naive_rate, 3),
        "naive_ms_per_power_flow": round(1000.0 / (naive_rate * 96), 2),
        "speedup": round(fast_rate / naive_rate, 1),
        "max_abs_reward_diff": reward_diff,
        "max_abs_score_diff": score_diff,
        "incremental_equals_full_bitwise": bitwise,
        "exact": exact,
    }
    print(f"day {day}: {steps} fast steps, {naive_steps} naive steps (96 power flows each)")
    print(f"  fast  ({summary['fast_solver']}, 8 slots per step): {fast_rate:10.1f} steps/s")
    print(
        f"  naive (pandapower.runpp, 96 slots per step): {naive_rate:10.3f} steps/s "
        f"({summary['naive_ms_per_power_flow']} ms per power flow)"
    )
    if args.lightsim2grid:
        ls_rate, ls_rewards, _ = naive_run({"lightsim2grid": True})
        ls_diff = float(np.max(np.abs(np.asarray(ls_rewards) - np.asarray(fast_rewards[:naive_steps]))))
        summary["naive_lightsim2grid_steps_per_s"] = round(ls_rate, 3)
        summary["speedup_vs_lightsim2grid"] = round(fast_rate / ls_rate, 1)
        print(
            f"  naive (pandapower + lightsim2grid):          {ls_rate:10.3f} steps/s "
            f"(reward diff {ls_diff:.1e})"
        )
    print(
        f"  speedup {summary['speedup']}x; max |reward diff| {reward_diff:.2e}, "
        f"max |score diff| {score_diff:.2e}; incremental == full-day (bitwise): {bitwise}"
    )
    print(json.dumps(summary))
    return 0 if exact else 1


if __name__ == "__main__":
    raise SystemExit(main())
