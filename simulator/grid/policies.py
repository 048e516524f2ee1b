"""Policies that act in :class:`LoadShiftEnv`: the baselines and the common interface RL policies share."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np
from numpy.typing import NDArray

from simulator.grid.actions import EARLIER, LATER, SHIFT_FRACTIONS, ShiftAction
from simulator.grid.env import LoadShiftEnv
from simulator.grid.model import hourly


class Policy(ABC):
    """Chooses the next action from the observation (and, for baselines, the environment's state)."""

    name: str = "policy"

    def reset(self, env: LoadShiftEnv) -> None:  # noqa: B027 - optional hook
        """Called after ``env.reset()`` at the start of each episode."""

    @abstractmethod
    def act(self, obs: NDArray[np.float32], env: LoadShiftEnv) -> Any:
        """An action in ``env.action_space``."""


def encode(env: LoadShiftEnv, shift: ShiftAction) -> Any:
    """``shift`` in the env's action encoding (MultiDiscrete vector or flat index)."""
    return env.codec.encode_multi(shift) if env.action_kind == "multi" else env.codec.encode_flat(shift)


class PvPeakHeuristic(Policy):
    """Moves demand toward the day's PV peak hour, one 10 % shift at a time.

    Step k takes controllable load k mod 7, finds the hour (other than the PV peak hour) in which that
    load demands most, and shifts 10 % of it one hour toward the PV peak. It knows the PV forecast but
    not the power-flow results.
    """

    name = "heuristic"

    def __init__(self) -> None:
        self._peak = 12
        self._step = 0

    def reset(self, env: LoadShiftEnv) -> None:
        self._peak = int(np.argmax(hourly(env.simulation.generation())))
        self._step = 0

    def act(self, obs: NDArray[np.float32], env: LoadShiftEnv) -> Any:
        which = self._step % len(env.model.controllable)
        self._step += 1
        load = env.model.controllable_indices[which]
        demand = hourly(env.simulation.p_load[:, load]).copy()
        demand[self._peak] = -np.inf
        hour = int(np.argmax(demand))
        direction = LATER if hour < self._peak else EARLIER
        if not env.codec.bidirectional and direction == EARLIER:
            # Only later shifts exist: move the largest demand before the peak instead.
            before = demand[: self._peak]
            hour = int(np.argmax(before)) if before.size else 23
            direction = LATER
        return encode(env, ShiftAction(which, hour, len(SHIFT_FRACTIONS) - 1, direction))


class NoShift(Policy):
    """Never moves demand (every action is the documented no-op: hour 23 to the next day)."""

    name = "no-op"

    def act(self, obs: NDArray[np.float32], env: LoadShiftEnv) -> Any:
        return encode(env, ShiftAction(0, 23, 0, LATER))


class SurplusBoundaryRule(Policy):
    """Fills exporting hours from their importing neighbours, the biggest transferable shift first.

    Uses the power-flow state: for every controllable load, importing hour h and exporting neighbour
    h +- 1 it can move ``min(10 % of the load's demand in h, export of the neighbour)``; it takes the
    largest such shift (10 %). With nothing left to move it does the documented no-op. This is the
    demonstrator the PPO policy is warm-started from (behaviour cloning), not a baseline.
    """

    name = "boundary-rule"

    def act(self, obs: NDArray[np.float32], env: LoadShiftEnv) -> Any:
        sim = env.simulation
        exchange = -hourly(sim.p_ext)
        surplus = np.maximum(exchange, 0.0)
        importing = exchange < 0.0
        demand = hourly(sim.p_load[:, list(env.model.controllable_indices)])  # (24, n_controllable)
        fraction = SHIFT_FRACTIONS[-1]
        best = (0.0, ShiftAction(0, 23, 0, LATER))
        directions = (LATER, EARLIER) if env.codec.bidirectional else (LATER,)
        for direction in directions:
            step = 1 if direction == LATER else -1
            for hour in range(24):
                target = hour + step
                if not importing[hour] or not 0 <= target < 24 or surplus[target] <= 0.0:
                    continue
                for which in range(demand.shape[1]):
                    value = min(fraction * demand[hour, which], surplus[target])
                    if value > best[0]:
                        best = (value, ShiftAction(which, hour, len(SHIFT_FRACTIONS) - 1, direction))
        return encode(env, best[1])
