"""The Gymnasium environment: spaces, shift constraints, rewards, caching exactness, bad input."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from simulator.grid.actions import EARLIER, LATER, SHIFT_FRACTIONS, ActionCodec, ShiftAction
from simulator.grid.env import LoadShiftEnv
from simulator.grid.errors import DayNotAvailableError, InvalidActionError, PowerFlowDivergedError
from simulator.grid.model import GridModel, hourly
from simulator.grid.powerflow import NewtonSolver, PandapowerSolver, PowerFlowSolver, SlotFlows
from simulator.grid.simulation import DaySimulation


@pytest.fixture
def env(model: GridModel, summer_day: int) -> LoadShiftEnv:
    e = LoadShiftEnv(model, days=(summer_day,), actions_per_day=12)
    e.reset(seed=0)
    return e


def test_env_passes_gymnasium_checks(model: GridModel) -> None:
    env = LoadShiftEnv(model, days="test", actions_per_day=4)
    check_env(env, skip_render_check=True)


def test_action_spaces_multi_flat_and_seed_exact() -> None:
    assert ActionCodec(7).nvec == (7, 24, 3, 2) and ActionCodec(7).size == 1008
    assert ActionCodec(7, bidirectional=False).nvec == (7, 24, 3)
    codec = ActionCodec(7)
    shift = ShiftAction(load=5, hour=17, level=2, direction=EARLIER)
    assert codec.decode(codec.encode_flat(shift)) == shift
    assert codec.decode(codec.encode_multi(shift)) == shift


def test_observation_is_the_controllable_demand_distribution_pv_and_exchange(env: LoadShiftEnv) -> None:
    obs = env.observation()
    sim = env.simulation
    scale = sim.initial_p_load.sum(axis=1).mean()
    demand = hourly(sim.p_load[:, list(env.model.controllable_indices)]).T.reshape(-1) / scale

    assert obs.shape == env.observation_space.shape and obs.dtype == np.float32
    np.testing.assert_allclose(obs[: demand.size], demand, rtol=1e-6)
    np.testing.assert_allclose(
        obs[demand.size : demand.size + 24], hourly(sim.generation()) / scale, rtol=1e-6
    )
    assert obs[-1] == 0.0


@pytest.mark.parametrize("direction", [LATER, EARLIER])
def test_a_shift_keeps_daily_energy_and_moves_only_between_two_contiguous_hours(
    env: LoadShiftEnv, direction: int
) -> None:
    sim = env.simulation
    before = sim.p_load.copy()
    which, hour, level = 2, 9, 2

    env.step(env.codec.encode_multi(ShiftAction(which, hour, level, direction)))

    load = env.model.controllable_indices[which]
    diff = sim.p_load - before
    changed_rows = np.flatnonzero(np.abs(diff).sum(axis=1) > 0)
    target = hour + (1 if direction == LATER else -1)
    assert set(changed_rows) == set(range(4 * hour, 4 * hour + 4)) | set(range(4 * target, 4 * target + 4))
    assert np.count_nonzero(np.abs(diff).sum(axis=0)) == 1  # only that load
    assert sim.p_load[:, load].sum() == pytest.approx(before[:, load].sum(), rel=1e-12)
    moved = before[4 * hour : 4 * hour + 4, load] * SHIFT_FRACTIONS[level]
    np.testing.assert_allclose(diff[4 * hour : 4 * hour + 4, load], -moved, rtol=1e-12)
    np.testing.assert_allclose(diff[4 * target : 4 * target + 4, load], moved, rtol=1e-12)


def test_a_shift_out_of_the_day_is_a_noop_with_zero_gain(env: LoadShiftEnv) -> None:
    before = env.simulation.p_load.copy()

    _, reward, _, _, info = env.step(env.codec.encode_multi(ShiftAction(0, 23, 2, LATER)))
    _, reward2, _, _, info2 = env.step(env.codec.encode_multi(ShiftAction(0, 0, 2, EARLIER)))

    assert info["noop"] and info2["noop"]
    assert reward == reward2 == 0.0
    assert np.array_equal(env.simulation.p_load, before)


@pytest.mark.parametrize(
    "action",
    [
        [7, 0, 0, 0],
        [0, 24, 0, 0],
        [0, 0, 3, 0],
        [0, 0, 0, 2],
        [-1, 0, 0, 0],
        [0, 0, 0],
        [1.5, 0, 0, 0],
        1008,
        -1,
    ],
)
def test_out_of_range_actions_raise_and_leave_the_state_alone(env: LoadShiftEnv, action: object) -> None:
    before = env.simulation.p_load.copy()
    steps = env.steps_done

    with pytest.raises(InvalidActionError):
        env.step(action)
    assert np.array_equal(env.simulation.p_load, before)
    assert env.steps_done == steps


def test_rewards_are_score_gains_and_sum_to_the_day_gain(env: LoadShiftEnv) -> None:
    rng = np.random.default_rng(7)
    start = env.simulation.initial_metrics.score
    total = 0.0
    previous = start
    terminated = False
    while not terminated:
        _, reward, terminated, truncated, info = env.step(rng.integers(0, env.codec.nvec))
        assert reward == pytest.approx(info["score"] - previous, abs=1e-15)
        assert not truncated
        previous = info["score"]
        total += reward
    assert env.steps_done == env.actions_per_day
    assert total == pytest.approx(env.metrics().score - start, abs=1e-12)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(env.action_space.sample())


def test_score_reward_mode_returns_the_day_score(model: GridModel, summer_day: int) -> None:
    env = LoadShiftEnv(model, days=(summer_day,), reward="score", reward_scale=2.0, actions_per_day=3)
    env.reset()

    _, reward, _, _, info = env.step([0, 10, 2, 0])

    assert reward == pytest.approx(2.0 * info["score"])


def test_incremental_resimulation_equals_full_day_bit_for_bit(
    model: GridModel, fast_solver: NewtonSolver, summer_day: int
) -> None:
    incremental = DaySimulation(model, summer_day, fast_solver)
    full = DaySimulation(model, summer_day, fast_solver)
    codec = ActionCodec(len(model.controllable))
    rng = np.random.default_rng(11)

    for _ in range(40):
        shift = codec.decode(rng.integers(0, codec.nvec))
        load = model.controllable_indices[shift.load]
        outcome = incremental.shift(load, shift)
        full.shift(load, shift, resolve=False)
        full.resimulate()
        assert len(outcome.slots) in (0, 8)
        assert incremental.metrics() == full.metrics()
    assert incremental.power_flows < full.power_flows / 8


def test_incremental_fast_path_equals_naive_pandapower_path(
    model: GridModel, reference_solver: PandapowerSolver, summer_day: int
) -> None:
    env = LoadShiftEnv(model, days=(summer_day,), actions_per_day=5)
    env.reset()
    naive = DaySimulation(model, summer_day, reference_solver)
    assert naive.metrics().score == pytest.approx(env.simulation.initial_metrics.score, abs=1e-9)
    previous = naive.metrics().score
    for action in ([0, 10, 2, 1], [4, 16, 2, 1], [1, 7, 1, 0]):
        _, reward, _, _, info = env.step(action)
        shift = env.codec.decode(action)
        naive.shift(model.controllable_indices[shift.load], shift, resolve=False)
        naive.resimulate()
        assert info["score"] == pytest.approx(naive.metrics().score, abs=1e-9)
        assert reward == pytest.approx(naive.metrics().score - previous, abs=1e-9)
        previous = naive.metrics().score


class FailingSolver(PowerFlowSolver):
    """Delegates to a real solver but fails once the day is loaded (a stand-in for a bad power flow)."""

    def __init__(self, inner: PowerFlowSolver) -> None:
        self.inner = inner
        self.fail = False

    def solve(
        self, p_load: np.ndarray, q_load: np.ndarray, p_pv: np.ndarray, slots: Sequence[int]
    ) -> SlotFlows:
        if self.fail:
            raise PowerFlowDivergedError(slots, "forced by the test")
        return self.inner.solve(p_load, q_load, p_pv, slots)


def test_divergence_raises_by_default_and_leaves_the_day_untouched(
    model: GridModel, fast_solver: NewtonSolver, summer_day: int
) -> None:
    solver = FailingSolver(fast_solver)
    env = LoadShiftEnv(model, days=(summer_day,), solver=solver)
    env.reset()
    before = env.simulation.p_load.copy()
    score = env.metrics().score
    solver.fail = True

    with pytest.raises(PowerFlowDivergedError, match="forced"):
        env.step([0, 10, 2, 0])
    assert np.array_equal(env.simulation.p_load, before)
    assert env.metrics().score == score
    assert env.steps_done == 0


def test_divergence_can_be_a_documented_penalty(
    model: GridModel, fast_solver: NewtonSolver, summer_day: int
) -> None:
    solver = FailingSolver(fast_solver)
    env = LoadShiftEnv(
        model, days=(summer_day,), solver=solver, on_divergence="penalize", divergence_penalty=-3.0
    )
    env.reset()
    before = env.simulation.p_load.copy()
    solver.fail = True

    _, reward, _, _, info = env.step([0, 10, 2, 0])

    assert reward == -3.0 and info["diverged"]
    assert np.array_equal(env.simulation.p_load, before)


def test_reset_checks_requested_days(model: GridModel) -> None:
    env = LoadShiftEnv(model, days="test", actions_per_day=2)
    no_pv = next(iter(model.unavailable_days()))

    with pytest.raises(DayNotAvailableError):
        env.reset(options={"day": no_pv})
    with pytest.raises(DayNotAvailableError):
        LoadShiftEnv(model, days=(no_pv,))
    _, info = env.reset(seed=3)
    assert info["day"] in model.test_days()


def test_movable_demand_features_point_from_importing_to_exporting_hours(env: LoadShiftEnv) -> None:
    obs = env.observation()
    n = len(env.model.controllable)
    exchange = -hourly(env.simulation.p_ext)
    start = n * 24 + 4 * 24
    later = obs[start : start + n * 24].reshape(n, 24)
    earlier = obs[start + n * 24 : start + 2 * n * 24].reshape(n, 24)

    assert (later >= 0).all() and (earlier >= 0).all()
    assert later.sum() + earlier.sum() > 0  # a June day has something to move
    for hour in range(24):
        nxt = exchange[hour + 1] if hour < 23 else -1.0
        prev = exchange[hour - 1] if hour > 0 else -1.0
        if exchange[hour] >= 0 or nxt <= 0:
            assert (later[:, hour] == 0).all()
        if exchange[hour] >= 0 or prev <= 0:
            assert (earlier[:, hour] == 0).all()
