"""One simulated day whose demand can be shifted, with per-slot power-flow results cached.

The 96 slots of a day are independent power flows (no storage), so after a shift only the slots whose
injections changed (the 4 quarter-hours of the source hour and the 4 of the target hour) are solved
again; the other 88 results come from the cache. :meth:`DaySimulation.resimulate` solves all 96 slots
(the naive path); both paths give the same metrics (bit-for-bit with the same solver).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator.grid.actions import HOURS, ShiftAction
from simulator.grid.data import SLOT_HOURS, SLOTS_PER_DAY
from simulator.grid.errors import InvalidActionError, PowerFlowDivergedError
from simulator.grid.metrics import DayMetrics, day_metrics
from simulator.grid.model import GridModel
from simulator.grid.powerflow import FloatArray, PowerFlowSolver

QUARTERS = SLOTS_PER_DAY // HOURS


@dataclass(frozen=True)
class ShiftOutcome:
    """What a shift did: the slots re-solved (empty for a no-op) and the energy moved (MWh)."""

    slots: tuple[int, ...]
    moved_mwh: float


class DaySimulation:
    """A day of the grid with mutable demand. ``load`` arguments index the grid's loads."""

    def __init__(self, model: GridModel, day: int, solver: PowerFlowSolver) -> None:
        data = model.day(day)
        self.model = model
        self.day = day
        self.solver = solver
        self.p_load: FloatArray = data.p_load
        self.q_load: FloatArray = data.q_load
        self.p_pv: FloatArray = data.p_pv
        self._generation: FloatArray = self.p_pv.sum(axis=1)
        self.p_ext: FloatArray = np.empty(SLOTS_PER_DAY)
        self.vm_min: FloatArray = np.empty(SLOTS_PER_DAY)
        self.vm_max: FloatArray = np.empty(SLOTS_PER_DAY)
        self.power_flows = 0
        self.resimulate()
        self.initial_metrics = self.metrics()
        self.initial_p_load: FloatArray = self.p_load.copy()

    def _solve(self, slots: list[int]) -> None:
        index = np.asarray(slots, dtype=np.int64)
        flows = self.solver.solve(self.p_load[index], self.q_load[index], self.p_pv[index], slots)
        self.p_ext[index] = flows.p_ext_mw
        self.vm_min[index] = flows.vm_min_pu
        self.vm_max[index] = flows.vm_max_pu
        self.power_flows += len(slots)

    def resimulate(self) -> None:
        """Solve all 96 slots again (the naive full-day path)."""
        self._solve(list(range(SLOTS_PER_DAY)))

    def metrics(self) -> DayMetrics:
        return day_metrics(self.p_ext, self.p_load.sum(axis=1), self._generation)

    def load_total(self) -> FloatArray:
        out: FloatArray = self.p_load.sum(axis=1)
        return out

    def generation(self) -> FloatArray:
        return self._generation.copy()

    def shift(self, load: int, action: ShiftAction, *, resolve: bool = True) -> ShiftOutcome:
        """Move ``action.fraction`` of ``load``'s demand in ``action.hour`` to the neighbouring hour.

        With ``resolve`` the touched slots are solved again at once; if their power flow diverges the
        shift is undone and :class:`PowerFlowDivergedError` propagates (the cache stays consistent).
        """
        if not 0 <= load < self.p_load.shape[1]:
            raise InvalidActionError(f"load {load} is outside 0..{self.p_load.shape[1] - 1}")
        target = action.target_hour
        if target is None:
            return ShiftOutcome((), 0.0)
        src = slice(QUARTERS * action.hour, QUARTERS * (action.hour + 1))
        dst = slice(QUARTERS * target, QUARTERS * (target + 1))
        saved_p = (self.p_load[src, load].copy(), self.p_load[dst, load].copy())
        saved_q = (self.q_load[src, load].copy(), self.q_load[dst, load].copy())
        moved_p = action.fraction * self.p_load[src, load]
        moved_q = action.fraction * self.q_load[src, load]
        self.p_load[src, load] -= moved_p
        self.p_load[dst, load] += moved_p
        self.q_load[src, load] -= moved_q
        self.q_load[dst, load] += moved_q
        slots = tuple(range(src.start, src.stop)) + tuple(range(dst.start, dst.stop))
        if resolve:
            try:
                self._solve(sorted(slots))
            except PowerFlowDivergedError:
                self.p_load[src, load], self.p_load[dst, load] = saved_p
                self.q_load[src, load], self.q_load[dst, load] = saved_q
                raise
        return ShiftOutcome(tuple(sorted(slots)), float(moved_p.sum()) * SLOT_HOURS)
