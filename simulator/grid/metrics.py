"""Self-consumption (SCR) and self-sufficiency (SSR) of a day, from power-flow results.

With slot length dt = 0.25 h and, per slot t, total PV generation G_t, total load L_t and the external
grid's active power P_t (pandapower's ``res_ext_grid.p_mw``: > 0 import, < 0 export):

* generation        G = sum_t G_t dt
* load              L = sum_t L_t dt
* import            I = sum_t max(P_t, 0) dt
* export            E = sum_t max(-P_t, 0) dt
* losses            W = I - E + G - L                  (energy balance of the grid)
* consumption       C = L + W = G + I - E              (everything absorbed inside the grid)
* self-consumed     X = G - E                          (generation that did not leave the grid)
* SCR = X / G       share of the generation consumed inside the grid
* SSR = X / C       share of the consumption covered by local generation (= 1 - I / C)
* score = (SCR + SSR) / 2                              (the seed's reward)

SCR is undefined for a day without generation; such days are not available (see ``GridModel``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import NDArray

from simulator.grid.data import SLOT_HOURS


@dataclass(frozen=True)
class DayMetrics:
    """Energy balance (MWh) and ratios of one simulated day."""

    generation_mwh: float
    load_mwh: float
    import_mwh: float
    export_mwh: float
    losses_mwh: float
    consumption_mwh: float
    self_consumed_mwh: float
    scr: float
    ssr: float
    score: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def day_metrics(
    p_ext_mw: NDArray[np.float64], load_mw: NDArray[np.float64], generation_mw: NDArray[np.float64]
) -> DayMetrics:
    """Metrics from per-slot external-grid power, total load and total generation (all in MW)."""
    generation = float(np.sum(generation_mw)) * SLOT_HOURS
    if not generation > 0.0:
        raise ValueError("SCR is undefined for a day without generation")
    load = float(np.sum(load_mw)) * SLOT_HOURS
    imported = float(np.sum(np.maximum(p_ext_mw, 0.0))) * SLOT_HOURS
    exported = float(np.sum(np.maximum(-p_ext_mw, 0.0))) * SLOT_HOURS
    consumption = generation + imported - exported
    self_consumed = generation - exported
    scr = self_consumed / generation
    ssr = self_consumed / consumption
    return DayMetrics(
        generation_mwh=generation,
        load_mwh=load,
        import_mwh=imported,
        export_mwh=exported,
        losses_mwh=consumption - load,
        consumption_mwh=consumption,
        self_consumed_mwh=self_consumed,
        scr=scr,
        ssr=ssr,
        score=0.5 * (scr + ssr),
    )
