"""Power-flow solvers: one question, "what does the external grid deliver in each slot?".

Two implementations answer it:

* :class:`PandapowerSolver` - the reference: for every slot it writes the slot's loads and PV into the
  pandapower network and calls ``pandapower.runpp`` (Newton-Raphson; optionally the lightsim2grid backend).
  This is the "naive" path: a whole day costs 96 pandapower power flows.
* :class:`NewtonSolver` - the fast path: the network's bus admittance matrix is compiled once from
  pandapower's own model (``net._ppc['internal']['Ybus']``), then a batched Newton-Raphson in numpy solves
  any set of slots at once. Every slot is iterated on its own (converged slots leave the batch), and all
  reductions run in a fixed order, so a slot's result does not depend on which other slots share its
  batch: re-solving only the slots an action touches gives bit-for-bit the same numbers as re-solving
  the whole day.

Both solve to ``tolerance_mva`` (max. bus power mismatch, default 1e-9 MVA), so their day metrics agree far
below 1e-9 (checked by ``bench/grid.py`` and the tests).
"""

from __future__ import annotations

import copy
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from simulator.grid.errors import MissingExtraError, PowerFlowDivergedError

FloatArray = NDArray[np.float64]
ComplexArray = NDArray[np.complex128]


@dataclass(frozen=True)
class SlotFlows:
    """Power-flow results for a batch of slots (arrays of length = number of slots)."""

    p_ext_mw: FloatArray
    """Active power delivered by the external grid; positive = import into the grid, negative = export."""
    vm_min_pu: FloatArray
    vm_max_pu: FloatArray


class PowerFlowSolver(ABC):
    """Solves the grid for a batch of slots given every load's (p, q) and every PV plant's p."""

    name: str = "solver"

    @abstractmethod
    def solve(
        self, p_load: FloatArray, q_load: FloatArray, p_pv: FloatArray, slots: Sequence[int]
    ) -> SlotFlows:
        """``p_load``/``q_load``: (n_slots, n_loads) MW/Mvar; ``p_pv``: (n_slots, n_pv) MW.

        ``slots`` names the slots (for error messages). Raises :class:`PowerFlowDivergedError`.
        """


def _pandapower() -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pandapower
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise MissingExtraError("pandapower") from exc
    return pandapower


class PandapowerSolver(PowerFlowSolver):
    """Reference solver: one ``pandapower.runpp`` per slot on a private copy of the network."""

    def __init__(
        self,
        net: Any,
        *,
        tolerance_mva: float = 1e-9,
        max_iteration: int = 30,
        lightsim2grid: bool = False,
        numba: bool = False,
    ) -> None:
        self._pp = _pandapower()
        self._net = copy.deepcopy(net)
        self._options: dict[str, Any] = {
            "algorithm": "nr",
            "calculate_voltage_angles": True,
            "init": "dc",
            "tolerance_mva": tolerance_mva,
            "max_iteration": max_iteration,
            "numba": numba,
        }
        if lightsim2grid:
            try:
                import lightsim2grid as _ls2g  # noqa: F401
            except ImportError as exc:
                raise MissingExtraError("lightsim2grid") from exc
            self._options["lightsim2grid"] = True
        self.name = "pandapower+lightsim2grid" if lightsim2grid else "pandapower"

    def solve(
        self, p_load: FloatArray, q_load: FloatArray, p_pv: FloatArray, slots: Sequence[int]
    ) -> SlotFlows:
        n = p_load.shape[0]
        p_ext = np.empty(n)
        vmin = np.empty(n)
        vmax = np.empty(n)
        net = self._net
        for k in range(n):
            net.load["p_mw"] = p_load[k]
            net.load["q_mvar"] = q_load[k]
            net.sgen["p_mw"] = p_pv[k]
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    self._pp.runpp(net, **self._options)
            except self._pp.LoadflowNotConverged as exc:
                raise PowerFlowDivergedError([slots[k]], f"pandapower: {exc}") from exc
            p_ext[k] = float(net.res_ext_grid["p_mw"].sum())
            vm = net.res_bus["vm_pu"].to_numpy()
            vmin[k] = float(vm.min())
            vmax[k] = float(vm.max())
        return SlotFlows(p_ext, vmin, vmax)


class NewtonSolver(PowerFlowSolver):
    """Fast solver: batched polar Newton-Raphson on the admittance matrix compiled from pandapower.

    Compilation runs pandapower once on the unloaded network; its voltages are the fixed start point
    of every slot (deterministic, and it carries the transformer's phase shift).
    """

    def __init__(
        self, net: Any, *, tolerance_mva: float = 1e-9, max_iteration: int = 30, kernel: str = "auto"
    ) -> None:
        if kernel not in ("auto", "numba", "numpy"):
            raise ValueError("kernel must be 'auto', 'numba' or 'numpy'")
        self._kernel: Any = None
        if kernel in ("auto", "numba"):
            try:
                from simulator.grid import _kernels
            except ImportError as exc:
                if kernel == "numba":
                    raise MissingExtraError("numba") from exc
            else:
                self._kernel = _kernels
        self.name = "newton-numba" if self._kernel is not None else "newton-numpy"
        pp = _pandapower()
        work = copy.deepcopy(net)
        work.load["p_mw"] = 0.0
        work.load["q_mvar"] = 0.0
        work.sgen["p_mw"] = 0.0
        work.sgen["q_mvar"] = 0.0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pp.runpp(
                work,
                algorithm="nr",
                calculate_voltage_angles=True,
                init="dc",
                numba=False,
                tolerance_mva=1e-9,
                max_iteration=30,
            )
        ppci = work._ppc["internal"]
        lookup = np.asarray(work._pd2ppc_lookups["bus"], dtype=np.int64)
        if len(ppci["pv"]) != 0 or len(ppci["ref"]) != 1:
            raise ValueError("NewtonSolver supports one slack bus and no voltage-controlled buses")
        self._base_mva = float(ppci["baseMVA"])
        self._y: ComplexArray = np.asarray(ppci["Ybus"].toarray(), dtype=np.complex128)
        self._ref = int(ppci["ref"][0])
        self._pq: NDArray[np.int64] = np.asarray(np.sort(ppci["pq"]), dtype=np.int64)
        self._v0: ComplexArray = np.asarray(ppci["V"], dtype=np.complex128).copy()
        self._load_bus: NDArray[np.int64] = lookup[work.load["bus"].to_numpy()]
        self._pv_bus: NDArray[np.int64] = lookup[work.sgen["bus"].to_numpy()]
        self._n = int(self._y.shape[0])
        # Element -> bus aggregation as a padded gather: bus i sums columns _members[i, :] of the
        # element matrix (column -1 is a zero column), always in the same order.
        members: list[list[int]] = [[] for _ in range(self._n)]
        for j, bus in enumerate(self._load_bus):
            members[int(bus)].append(j)
        offset = len(self._load_bus)
        for j, bus in enumerate(self._pv_bus):
            members[int(bus)].append(offset + j)
        width = max(1, max(len(x) for x in members))
        self._members = np.full((self._n, width), -1, dtype=np.int64)
        for i, cols in enumerate(members):
            self._members[i, : len(cols)] = cols
        self._tol = tolerance_mva / self._base_mva
        self._max_iteration = max_iteration

    @property
    def bus_count(self) -> int:
        return self._n

    def _sbus(self, p_load: FloatArray, q_load: FloatArray, p_pv: FloatArray) -> ComplexArray:
        n_slots = p_load.shape[0]
        zero = np.zeros((n_slots, 1))
        p = np.concatenate([-p_load, p_pv, zero], axis=1)
        q = np.concatenate([-q_load, np.zeros_like(p_pv), zero], axis=1)
        sbus: ComplexArray = p[:, self._members].sum(axis=2) + 1j * q[:, self._members].sum(axis=2)
        return sbus / self._base_mva

    def _currents(self, v: ComplexArray) -> ComplexArray:
        # Row-wise products summed along a fixed axis: the result of a row never depends on the batch.
        out: ComplexArray = (self._y[np.newaxis, :, :] * v[:, np.newaxis, :]).sum(axis=2)
        return out

    def _mismatch(self, v: ComplexArray, sbus: ComplexArray) -> FloatArray:
        mis = v * np.conj(self._currents(v)) - sbus
        pq = self._pq
        out: FloatArray = np.concatenate([mis.real[:, pq], mis.imag[:, pq]], axis=1)
        return out

    def _jacobian(self, v: ComplexArray) -> FloatArray:
        y = self._y[np.newaxis, :, :]
        current = self._currents(v)
        vnorm = v / np.abs(v)
        eye = np.eye(self._n, dtype=bool)[np.newaxis, :, :]
        diag_i = np.where(eye, current[:, :, np.newaxis], 0.0)
        ds_dva = 1j * v[:, :, np.newaxis] * np.conj(diag_i - y * v[:, np.newaxis, :])
        ds_dvm = v[:, :, np.newaxis] * np.conj(y * vnorm[:, np.newaxis, :]) + np.where(
            eye, (np.conj(current) * vnorm)[:, :, np.newaxis], 0.0
        )
        pq = self._pq
        a = ds_dva[:, pq][:, :, pq]
        m = ds_dvm[:, pq][:, :, pq]
        top = np.concatenate([a.real, m.real], axis=2)
        bottom = np.concatenate([a.imag, m.imag], axis=2)
        jac: FloatArray = np.concatenate([top, bottom], axis=1)
        return jac

    def solve_voltages(
        self, p_load: FloatArray, q_load: FloatArray, p_pv: FloatArray, slots: Sequence[int]
    ) -> ComplexArray:
        """Complex bus voltages (n_slots, n_bus) in pandapower's internal bus order."""
        sbus = self._sbus(p_load, q_load, p_pv)
        n_slots = sbus.shape[0]
        v = np.tile(self._v0, (n_slots, 1))
        pq = self._pq
        m = len(pq)
        active = np.arange(n_slots)
        for _ in range(self._max_iteration + 1):
            va = v[active]
            f = self._mismatch(va, sbus[active])
            with np.errstate(invalid="ignore"):
                norm = np.max(np.abs(f), axis=1)
            bad = ~np.isfinite(norm)
            if bad.any():
                raise PowerFlowDivergedError(
                    [slots[int(i)] for i in active[bad]], "voltages became non-finite"
                )
            done = norm < self._tol
            active, va, f = active[~done], va[~done], f[~done]
            if active.size == 0:
                return v
            try:
                dx = np.linalg.solve(self._jacobian(va), -f[:, :, np.newaxis])[:, :, 0]
            except np.linalg.LinAlgError as exc:
                raise PowerFlowDivergedError([slots[int(i)] for i in active], "singular Jacobian") from exc
            angle = np.angle(va)
            magnitude = np.abs(va)
            angle[:, pq] += dx[:, :m]
            magnitude[:, pq] += dx[:, m:]
            v[active] = magnitude * np.exp(1j * angle)
        raise PowerFlowDivergedError(
            [slots[int(i)] for i in active], f"no convergence within {self._max_iteration} iterations"
        )

    def solve(
        self, p_load: FloatArray, q_load: FloatArray, p_pv: FloatArray, slots: Sequence[int]
    ) -> SlotFlows:
        if self._kernel is not None:
            return self._solve_numba(p_load, q_load, p_pv, slots)
        v = self.solve_voltages(p_load, q_load, p_pv, slots)
        row = (self._y[self._ref][np.newaxis, :] * v).sum(axis=1)
        s_ref = v[:, self._ref] * np.conj(row) * self._base_mva
        vm = np.abs(v)
        return SlotFlows(np.ascontiguousarray(s_ref.real), vm.min(axis=1), vm.max(axis=1))

    def _solve_numba(
        self, p_load: FloatArray, q_load: FloatArray, p_pv: FloatArray, slots: Sequence[int]
    ) -> SlotFlows:
        kernel = self._kernel
        sbus = np.ascontiguousarray(self._sbus(p_load, q_load, p_pv))
        n_slots = sbus.shape[0]
        p_ext = np.empty(n_slots)
        vm_min = np.empty(n_slots)
        vm_max = np.empty(n_slots)
        status = np.empty(n_slots, dtype=np.int64)
        kernel.newton_batch(
            self._y,
            self._v0,
            self._ref,
            self._pq,
            sbus,
            self._tol,
            self._max_iteration,
            p_ext,
            vm_min,
            vm_max,
            status,
        )
        if (status == kernel.DIVERGED).any():
            raise PowerFlowDivergedError(
                [slots[int(i)] for i in np.flatnonzero(status == kernel.DIVERGED)],
                "voltages became non-finite",
            )
        if (status == kernel.NOT_CONVERGED).any():
            raise PowerFlowDivergedError(
                [slots[int(i)] for i in np.flatnonzero(status == kernel.NOT_CONVERGED)],
                f"no convergence within {self._max_iteration} iterations",
            )
        return SlotFlows(p_ext * self._base_mva, vm_min, vm_max)
