"""The fast Newton solver against pandapower, batch independence, and non-converging power flows."""

from __future__ import annotations

import numpy as np
import pytest

from simulator.grid.errors import PowerFlowDivergedError
from simulator.grid.model import GridModel
from simulator.grid.network import UC9_GRID, build_network
from simulator.grid.powerflow import NewtonSolver, PandapowerSolver


def _random_injections(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    rated_load = np.array([ld.p_mw for ld in UC9_GRID.loads])
    rated_pv = np.array([p.p_mw for p in UC9_GRID.pv])
    p = rated_load * rng.uniform(0.0, 1.0, (n, len(rated_load)))
    q = p * rng.uniform(-0.2, 0.5, p.shape)
    pv = rated_pv * rng.uniform(0.0, 0.7, (n, len(rated_pv)))
    return p, q, pv


def test_fast_solver_matches_pandapower_runpp(
    fast_solver: NewtonSolver, reference_solver: PandapowerSolver
) -> None:
    p, q, pv = _random_injections(4, seed=1)

    fast = fast_solver.solve(p, q, pv, range(4))
    ref = reference_solver.solve(p, q, pv, range(4))

    np.testing.assert_allclose(fast.p_ext_mw, ref.p_ext_mw, rtol=0, atol=1e-9)
    np.testing.assert_allclose(fast.vm_min_pu, ref.vm_min_pu, rtol=0, atol=1e-9)
    np.testing.assert_allclose(fast.vm_max_pu, ref.vm_max_pu, rtol=0, atol=1e-9)
    # Export at high PV, import at low PV: the sign convention is pandapower's.
    assert (fast.p_ext_mw < 0).any() or (fast.p_ext_mw > 0).all()


def test_numpy_and_numba_kernels_agree(model: GridModel, fast_solver: NewtonSolver) -> None:
    numpy_solver = NewtonSolver(model.network, kernel="numpy")
    p, q, pv = _random_injections(6, seed=2)

    a = fast_solver.solve(p, q, pv, range(6))
    b = numpy_solver.solve(p, q, pv, range(6))

    assert numpy_solver.name == "newton-numpy"
    np.testing.assert_allclose(a.p_ext_mw, b.p_ext_mw, rtol=0, atol=1e-9)


@pytest.mark.parametrize("kernel", ["auto", "numpy"])
def test_a_slot_result_does_not_depend_on_its_batch(model: GridModel, kernel: str) -> None:
    solver = model.fast_solver() if kernel == "auto" else NewtonSolver(model.network, kernel="numpy")
    p, q, pv = _random_injections(12, seed=3)

    whole = solver.solve(p, q, pv, range(12))
    part = solver.solve(p[[3, 7, 8]], q[[3, 7, 8]], pv[[3, 7, 8]], [3, 7, 8])

    assert np.array_equal(part.p_ext_mw, whole.p_ext_mw[[3, 7, 8]])


@pytest.mark.parametrize("kernel", ["auto", "numpy"])
def test_an_infeasible_slot_raises_a_divergence_error_naming_it(model: GridModel, kernel: str) -> None:
    solver = model.fast_solver() if kernel == "auto" else NewtonSolver(model.network, kernel="numpy")
    p, q, pv = _random_injections(3, seed=4)
    p[1] *= 400.0  # hundreds of MW on a 20 kV cable feeder: no power-flow solution

    with pytest.raises(PowerFlowDivergedError) as info:
        solver.solve(p, q, pv, [10, 11, 12])
    assert info.value.slots == (11,)


def test_pandapower_non_convergence_is_mapped_to_our_error() -> None:
    solver = PandapowerSolver(build_network(UC9_GRID), max_iteration=10)
    p, q, pv = _random_injections(1, seed=5)

    with pytest.raises(PowerFlowDivergedError, match="pandapower"):
        solver.solve(p * 400.0, q, pv, [42])
