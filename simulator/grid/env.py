"""Gymnasium environment: shift demand of the controllable loads within one day.

* Episode: one day (drawn from ``days`` at reset, or ``options={"day": d}``) and ``actions_per_day``
  shifts; the state is updated after each shift.
* Observation (float32): the controllable loads' hourly demand (7 x 24), hourly PV (24), hourly grid
  exchange from the power flow (24, export positive), and for every hour the demand that could move
  from it (an importing hour) into the next / previous hour (an exporting hour) without exceeding that
  hour's export (2 x 24), and per controllable load, hour and direction what a 10 % shift could move
  into an exporting neighbour (2 x 7 x 24), all divided by the day's mean load, plus the fraction of the
  episode spent.
* Action: see :mod:`simulator.grid.actions` (MultiDiscrete ``[7, 24, 3, 2]`` or flat ``Discrete(1008)``).
* Reward: with ``reward="improvement"`` (default) ``reward_scale * (score_after - score_before)`` where
  score = (SCR + SSR) / 2 of the whole day after the shift, so an episode's return is the day's gain; with
  ``reward="score"`` ``reward_scale * score_after``. ``info["score"]`` always holds the day's score.
* A shift out of the day (hour 23 later, hour 0 earlier) moves nothing (``info["noop"]``, reward 0 gain).
* An out-of-range action raises :class:`InvalidActionError`. A power flow that does not converge raises
  :class:`PowerFlowDivergedError` (``on_divergence="raise"``), or with ``on_divergence="penalize"`` the
  shift is undone, the reward is ``divergence_penalty`` and ``info["diverged"]`` is True.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from numpy.typing import NDArray

from simulator.grid.actions import SHIFT_FRACTIONS, ActionCodec, ShiftAction
from simulator.grid.errors import PowerFlowDivergedError
from simulator.grid.metrics import DayMetrics
from simulator.grid.model import GridModel, hourly
from simulator.grid.powerflow import PowerFlowSolver
from simulator.grid.simulation import DaySimulation

RewardMode = Literal["improvement", "score"]
ActionKind = Literal["multi", "flat"]
DivergencePolicy = Literal["raise", "penalize"]
DEFAULT_ACTIONS_PER_DAY = 288
"""Shifts per episode (one day): three decisions per 15-minute slot."""
OBS_BOUND = 1000.0


class LoadShiftEnv(gym.Env[NDArray[np.float32], Any]):
    """Load shifting on the UC9 grid; reward from (SCR + SSR) / 2 of the simulated day."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self,
        model: GridModel | None = None,
        *,
        days: Sequence[int] | str = "train",
        actions_per_day: int = DEFAULT_ACTIONS_PER_DAY,
        action_kind: ActionKind = "multi",
        bidirectional: bool = True,
        reward: RewardMode = "improvement",
        reward_scale: float = 1.0,
        on_divergence: DivergencePolicy = "raise",
        divergence_penalty: float = -1.0,
        solver: PowerFlowSolver | None = None,
    ) -> None:
        super().__init__()
        if actions_per_day < 1:
            raise ValueError("actions_per_day must be positive")
        self.model = model if model is not None else GridModel()
        self.days: tuple[int, ...] = self.model.days(days) if isinstance(days, str) else tuple(days)
        if not self.days:
            raise ValueError("no days to draw episodes from")
        for day in self.days:
            self.model.check_day(day)
        self.actions_per_day = actions_per_day
        self.codec = ActionCodec(len(self.model.controllable), bidirectional=bidirectional)
        self.action_kind = action_kind
        self.reward_mode = reward
        self.reward_scale = reward_scale
        self.on_divergence = on_divergence
        self.divergence_penalty = divergence_penalty
        self.solver = solver if solver is not None else self.model.fast_solver()
        self.action_space: spaces.Space[Any] = (
            spaces.MultiDiscrete(np.asarray(self.codec.nvec, dtype=np.int64))
            if action_kind == "multi"
            else spaces.Discrete(self.codec.size)
        )
        n_obs = 3 * 24 * len(self.model.controllable) + 4 * 24 + 1
        self.observation_space: spaces.Space[NDArray[np.float32]] = spaces.Box(
            low=-OBS_BOUND, high=OBS_BOUND, shape=(n_obs,), dtype=np.float32
        )
        self._sim: DaySimulation | None = None
        self._steps = 0
        self._score = 0.0
        self._scale = 1.0

    @property
    def simulation(self) -> DaySimulation:
        if self._sim is None:
            raise RuntimeError("call reset() first")
        return self._sim

    @property
    def steps_done(self) -> int:
        return self._steps

    def metrics(self) -> DayMetrics:
        return self.simulation.metrics()

    def decode(self, action: Any) -> ShiftAction:
        return self.codec.decode(action)

    def observation(self) -> NDArray[np.float32]:
        sim = self.simulation
        demand = hourly(sim.p_load[:, list(self.model.controllable_indices)]).T.reshape(-1)
        pv = hourly(sim.generation())
        exchange = -hourly(sim.p_ext)
        surplus = np.maximum(exchange, 0.0)
        deficit = np.maximum(-exchange, 0.0)
        # Demand that could move from a deficit hour into a surplus neighbour (later / earlier).
        to_later = np.minimum(deficit, np.append(surplus[1:], 0.0))
        to_earlier = np.minimum(deficit, np.insert(surplus[:-1], 0, 0.0))
        # Per load: what its largest (10 %) shift from each hour could move into an exporting neighbour.
        largest = SHIFT_FRACTIONS[-1] * demand.reshape(-1, 24)
        movable_later = np.minimum(largest, to_later[np.newaxis, :]).reshape(-1)
        movable_earlier = np.minimum(largest, to_earlier[np.newaxis, :]).reshape(-1)
        parts = [
            demand / self._scale,
            pv / self._scale,
            exchange / self._scale,
            to_later / self._scale,
            to_earlier / self._scale,
            movable_later / self._scale,
            movable_earlier / self._scale,
            np.asarray([self._steps / self.actions_per_day]),
        ]
        obs: NDArray[np.float32] = np.clip(np.concatenate(parts), -OBS_BOUND, OBS_BOUND).astype(np.float32)
        return obs

    def _info(self, metrics: DayMetrics | None = None, **extra: Any) -> dict[str, Any]:
        m = metrics if metrics is not None else self.simulation.metrics()
        info: dict[str, Any] = {
            "day": self.simulation.day,
            "score": m.score,
            "scr": m.scr,
            "ssr": m.ssr,
            "initial_score": self.simulation.initial_metrics.score,
        }
        info.update(extra)
        return info

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[NDArray[np.float32], dict[str, Any]]:
        super().reset(seed=seed)
        if options and "day" in options:
            day = int(options["day"])
            self.model.check_day(day)
        else:
            day = int(self.days[int(self.np_random.integers(len(self.days)))])
        self._sim = DaySimulation(self.model, day, self.solver)
        self._steps = 0
        self._score = self._sim.initial_metrics.score
        self._scale = float(self._sim.load_total().mean())
        return self.observation(), self._info()

    def step(self, action: Any) -> tuple[NDArray[np.float32], float, bool, bool, dict[str, Any]]:
        sim = self.simulation
        if self._steps >= self.actions_per_day:
            raise RuntimeError("episode is over; call reset()")
        shift = self.codec.decode(action)
        load = self.model.controllable_indices[shift.load]
        terminated = self._steps + 1 >= self.actions_per_day
        try:
            outcome = sim.shift(load, shift)
        except PowerFlowDivergedError as exc:
            if self.on_divergence == "raise":
                raise
            self._steps += 1
            info = self._info(noop=False, diverged=True, moved_mwh=0.0, error=str(exc))
            return self.observation(), float(self.divergence_penalty), terminated, False, info
        self._steps += 1
        before = self._score
        metrics = sim.metrics()
        self._score = metrics.score
        value = self._score - before if self.reward_mode == "improvement" else self._score
        info = self._info(metrics, noop=not outcome.slots, diverged=False, moved_mwh=outcome.moved_mwh)
        return self.observation(), float(self.reward_scale * value), terminated, False, info
