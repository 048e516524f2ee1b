"""SCR / SSR definitions and the energy balance of simulated days."""

from __future__ import annotations

import numpy as np
import pytest

from simulator.grid.data import SLOT_HOURS
from simulator.grid.metrics import day_metrics
from simulator.grid.model import GridModel
from simulator.grid.powerflow import NewtonSolver
from simulator.grid.simulation import DaySimulation


def test_ratios_follow_the_documented_energy_balance() -> None:
    # Slot 0: 4 MW PV, 3 MW load, 0.9 MW exported (0.1 MW losses); slot 1: no PV, 2 MW load, 2.05 MW imported.
    p_ext = np.array([-0.9, 2.05])
    load = np.array([3.0, 2.0])
    generation = np.array([4.0, 0.0])

    m = day_metrics(p_ext, load, generation)

    generated, exported, imported = 4.0 * SLOT_HOURS, 0.9 * SLOT_HOURS, 2.05 * SLOT_HOURS
    self_consumed = generated - exported
    consumption = generated + imported - exported
    assert m.generation_mwh == pytest.approx(generated)
    assert m.export_mwh == pytest.approx(exported) and m.import_mwh == pytest.approx(imported)
    assert m.losses_mwh == pytest.approx(consumption - 5.0 * SLOT_HOURS)
    assert m.scr == pytest.approx(self_consumed / generated)
    assert m.ssr == pytest.approx(self_consumed / consumption)
    assert m.ssr == pytest.approx(1.0 - imported / consumption)
    assert m.score == pytest.approx((m.scr + m.ssr) / 2)


def test_no_generation_means_scr_is_undefined() -> None:
    with pytest.raises(ValueError, match="undefined"):
        day_metrics(np.array([1.0]), np.array([1.0]), np.array([0.0]))


def test_simulated_day_balances_with_small_positive_losses(
    model: GridModel, fast_solver: NewtonSolver, summer_day: int
) -> None:
    sim = DaySimulation(model, summer_day, fast_solver)
    m = sim.metrics()

    assert 0.0 < m.losses_mwh < 0.05 * m.load_mwh
    assert m.export_mwh > 0.0 and m.import_mwh > 0.0  # a June day exports at noon, imports at night
    assert 0.0 < m.scr < 1.0 and 0.0 < m.ssr < 1.0
    assert m.generation_mwh == pytest.approx(float(model.day(summer_day).p_pv.sum()) * SLOT_HOURS)
