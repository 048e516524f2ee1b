"""The grid model: a network, its one-year SimBench profiles, the controllable loads and the day split."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from simulator.grid.data import DAYS_IN_YEAR, SLOT_HOURS, SLOTS_PER_DAY, load_profiles, res_profiles
from simulator.grid.errors import DayNotAvailableError
from simulator.grid.network import UC9_GRID, GridSpec, LoadKind, build_network
from simulator.grid.powerflow import FloatArray, NewtonSolver, PandapowerSolver

TEST_EVERY = 5
"""Every fifth available day (day-of-year % 5 == TEST_OFFSET) is held out for testing."""
TEST_OFFSET = 2


@dataclass(frozen=True)
class DayInjections:
    """One day's element powers, shaped (96 slots, n_elements), in MW / Mvar."""

    day: int
    p_load: FloatArray
    q_load: FloatArray
    p_pv: FloatArray


@dataclass(frozen=True)
class LoadShare:
    """A load's annual energy and its share of the annual energy of all loads of its kind."""

    index: int
    name: str
    kind: LoadKind
    profile: str
    energy_mwh: float
    share: float


class GridModel:
    """Static part of the simulator for one :class:`GridSpec`: profiles, network, controllable loads."""

    def __init__(
        self, spec: GridSpec = UC9_GRID, *, domestic_controllable: int = 3, industrial_controllable: int = 4
    ) -> None:
        self.spec = spec
        loads = load_profiles([ld.profile for ld in spec.loads])
        pv = res_profiles([p.profile for p in spec.pv])
        rated = np.asarray([ld.p_mw for ld in spec.loads])
        # (366, 96, n) arrays in MW / Mvar; PV at unity power factor.
        self._p_load = np.stack([loads[ld.profile][0] for ld in spec.loads], axis=2) * rated
        self._q_load = np.stack([loads[ld.profile][1] for ld in spec.loads], axis=2) * (rated * spec.tan_phi)
        self._p_pv = np.stack([pv[p.profile] for p in spec.pv], axis=2) * np.asarray(
            [p.p_mw for p in spec.pv]
        )
        for array in (self._p_load, self._q_load, self._p_pv):
            array.setflags(write=False)
        self._unavailable: dict[int, str] = {}
        for day in range(DAYS_IN_YEAR):
            if not (
                np.isfinite(self._p_load[day]).all()
                and np.isfinite(self._q_load[day]).all()
                and np.isfinite(self._p_pv[day]).all()
            ):
                self._unavailable[day] = "the profiles have missing values"
            elif not self._p_pv[day].sum() > 0.0:
                self._unavailable[day] = "no PV generation, so SCR is undefined"
        self.shares = self._demand_shares()
        domestic = [s for s in self.shares if s.kind == "domestic"][:domestic_controllable]
        industrial = [s for s in self.shares if s.kind == "industrial"][:industrial_controllable]
        self.controllable: tuple[LoadShare, ...] = tuple(domestic + industrial)

    @property
    def load_names(self) -> tuple[str, ...]:
        return tuple(ld.name for ld in self.spec.loads)

    @property
    def controllable_indices(self) -> tuple[int, ...]:
        return tuple(s.index for s in self.controllable)

    def _demand_shares(self) -> tuple[LoadShare, ...]:
        energy = self._p_load.sum(axis=(0, 1)) * SLOT_HOURS
        out: list[LoadShare] = []
        for kind in ("domestic", "industrial"):
            members = [i for i, ld in enumerate(self.spec.loads) if ld.kind == kind]
            total = float(sum(energy[i] for i in members))
            for i in sorted(members, key=lambda i: -energy[i]):
                ld = self.spec.loads[i]
                out.append(
                    LoadShare(i, ld.name, ld.kind, ld.profile, float(energy[i]), float(energy[i]) / total)
                )
        return tuple(out)

    def controllable_share(self, kind: LoadKind) -> float:
        """Share of the annual energy of ``kind`` loads carried by the controllable ones."""
        return sum(s.share for s in self.controllable if s.kind == kind)

    # Days ---------------------------------------------------------------------------------------

    def unavailable_days(self) -> dict[int, str]:
        return dict(self._unavailable)

    def available_days(self) -> tuple[int, ...]:
        return tuple(d for d in range(DAYS_IN_YEAR) if d not in self._unavailable)

    def train_days(self) -> tuple[int, ...]:
        return tuple(d for d in self.available_days() if d % TEST_EVERY != TEST_OFFSET)

    def test_days(self) -> tuple[int, ...]:
        return tuple(d for d in self.available_days() if d % TEST_EVERY == TEST_OFFSET)

    def days(self, which: str) -> tuple[int, ...]:
        """``train``, ``test``, ``all``, or a comma-separated list / ``a-b`` range of day numbers."""
        if which == "train":
            return self.train_days()
        if which == "test":
            return self.test_days()
        if which == "all":
            return self.available_days()
        picked: list[int] = []
        for part in which.split(","):
            part = part.strip()
            if "-" in part[1:]:
                first, last = part.split("-", 1)
                picked.extend(range(int(first), int(last) + 1))
            elif part:
                picked.append(int(part))
        for day in picked:
            self.check_day(day)
        return tuple(picked)

    def check_day(self, day: int) -> None:
        if not 0 <= day < DAYS_IN_YEAR:
            raise DayNotAvailableError(day, f"the SimBench profiles cover days 0..{DAYS_IN_YEAR - 1} of 2016")
        if day in self._unavailable:
            raise DayNotAvailableError(day, self._unavailable[day])

    def day(self, day: int) -> DayInjections:
        """The day's injections (fresh, writable copies)."""
        self.check_day(day)
        return DayInjections(day, self._p_load[day].copy(), self._q_load[day].copy(), self._p_pv[day].copy())

    # Solvers ------------------------------------------------------------------------------------

    @functools.cached_property
    def network(self) -> object:
        """The pandapower network (built on first use)."""
        return build_network(self.spec)

    @functools.cached_property
    def _fast_solver(self) -> NewtonSolver:
        return NewtonSolver(self.network)

    def fast_solver(self) -> NewtonSolver:
        """The compiled Newton solver (shared: it holds no per-day state)."""
        return self._fast_solver

    def reference_solver(self, *, lightsim2grid: bool = False, numba: bool = False) -> PandapowerSolver:
        return PandapowerSolver(self.network, lightsim2grid=lightsim2grid, numba=numba)


def hourly(values: NDArray[np.float64]) -> NDArray[np.float64]:
    """Mean power per hour from 96 quarter-hour values along the first axis."""
    out: NDArray[np.float64] = values.reshape((24, SLOTS_PER_DAY // 24, *values.shape[1:])).mean(axis=1)
    return out


def describe_shares(model: GridModel, kinds: Sequence[LoadKind] = ("domestic", "industrial")) -> list[str]:
    """Human-readable lines: every load's annual energy and share, controllable ones marked."""
    chosen = set(model.controllable_indices)
    lines: list[str] = []
    for kind in kinds:
        lines.append(f"{kind} loads (annual energy, share of {kind} demand):")
        for s in (x for x in model.shares if x.kind == kind):
            mark = "*" if s.index in chosen else " "
            lines.append(
                f" {mark} {s.name:<10} {s.profile:<5} {s.energy_mwh:9.1f} MWh {100 * s.share:5.1f} %"
            )
        lines.append(f"   controllable {kind} share: {100 * model.controllable_share(kind):.1f} %")
    return lines
