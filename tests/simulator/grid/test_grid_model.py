"""The UC9 grid: SimBench data, 13 + 13 loads with PV, the controllable loads and the day split."""

from __future__ import annotations

import numpy as np
import pytest

from simulator.grid import data as grid_data
from simulator.grid.data import DAYS_IN_YEAR, SLOTS_PER_DAY, load_profiles, res_profiles
from simulator.grid.errors import DayNotAvailableError, GridDataError
from simulator.grid.model import GridModel, describe_shares
from simulator.grid.network import UC9_GRID, build_network


def test_profiles_come_from_the_simbench_wheel_as_one_year_of_quarter_hours() -> None:
    p, q = load_profiles(["H0-A"])["H0-A"]
    pv = res_profiles(["PV3"])["PV3"]

    assert p.shape == q.shape == pv.shape == (DAYS_IN_YEAR, SLOTS_PER_DAY)
    assert np.isfinite(p).all() and np.isfinite(pv).all()
    assert p.max() <= 1.0 + 1e-9 and p.min() >= 0.0
    assert pv.min() >= 0.0 and pv.max() > 0.3
    assert not p.flags.writeable


def test_unknown_profile_is_a_data_error() -> None:
    with pytest.raises(GridDataError, match="NOPE"):
        load_profiles(["NOPE"])


def test_network_has_13_domestic_and_13_industrial_loads_and_pv() -> None:
    net = build_network(UC9_GRID)

    names = list(net.load["name"])
    assert sum(n.startswith("Load_D_") for n in names) == 13
    assert sum(n.startswith("Load_I_") for n in names) == 13
    assert len(net.sgen) == len(UC9_GRID.pv) > 0
    assert set(net.sgen["type"]) == {"PV"}
    # A domestic and an industrial client group share each feeder bus, as in the seed.
    for bus in UC9_GRID.buses:
        assert {f"Load_D_{bus}", f"Load_I_{bus}"} <= set(names)
    assert len(net.ext_grid) == 1


def test_controllable_loads_are_the_top_3_domestic_and_top_4_industrial(model: GridModel) -> None:
    chosen = model.controllable

    assert [s.kind for s in chosen] == ["domestic"] * 3 + ["industrial"] * 4
    for kind in ("domestic", "industrial"):
        members = [s for s in model.shares if s.kind == kind]
        picked = [s for s in chosen if s.kind == kind]
        assert sum(s.share for s in members) == pytest.approx(1.0)
        floor = min(s.energy_mwh for s in picked)
        assert all(s.energy_mwh <= floor for s in members if s not in picked)
        assert model.controllable_share(kind) == pytest.approx(sum(s.share for s in picked))
    lines = describe_shares(model)
    assert sum(line.startswith(" *") for line in lines) == 7


def test_train_and_test_days_split_the_available_days(model: GridModel) -> None:
    train, test = set(model.train_days()), set(model.test_days())

    assert not train & test
    assert train | test == set(model.available_days())
    assert 0.15 < len(test) / len(model.available_days()) < 0.25
    months = {d // 31 for d in test}
    assert len(months) >= 11  # held-out days cover the whole year


@pytest.mark.parametrize("day", [-1, DAYS_IN_YEAR, 10_000])
def test_days_outside_the_year_are_refused(model: GridModel, day: int) -> None:
    with pytest.raises(DayNotAvailableError, match="cover days"):
        model.day(day)


def test_days_without_pv_are_refused_because_scr_is_undefined(model: GridModel) -> None:
    no_pv = [d for d, why in model.unavailable_days().items() if "no PV" in why]

    assert no_pv, "SimBench 2016 has days without PV generation"
    with pytest.raises(DayNotAvailableError, match="no PV generation"):
        model.day(no_pv[0])
    assert no_pv[0] not in model.available_days()


def test_days_with_missing_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    real = grid_data.load_profiles

    def with_gap(names: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        out = {}
        for name, (p, q) in real(names).items():
            p = p.copy()
            p[200, 40] = np.nan
            out[name] = (p, q)
        return out

    monkeypatch.setattr("simulator.grid.model.load_profiles", with_gap)
    gappy = GridModel()

    with pytest.raises(DayNotAvailableError, match="missing values"):
        gappy.day(200)
    assert 200 not in gappy.available_days() and 201 in gappy.available_days()


def test_day_ranges_parse_and_are_checked(model: GridModel) -> None:
    assert model.days("150-152,180") == (150, 151, 152, 180)
    with pytest.raises(DayNotAvailableError):
        model.days("400")
