"""Shared, expensive objects for the grid tests: built once per session."""

from __future__ import annotations

import pytest

from simulator.grid.model import GridModel
from simulator.grid.powerflow import NewtonSolver, PandapowerSolver


@pytest.fixture(scope="session")
def model() -> GridModel:
    return GridModel()


@pytest.fixture(scope="session")
def fast_solver(model: GridModel) -> NewtonSolver:
    return model.fast_solver()


@pytest.fixture(scope="session")
def reference_solver(model: GridModel) -> PandapowerSolver:
    return model.reference_solver()


@pytest.fixture(scope="session")
def summer_day(model: GridModel) -> int:
    """A held-out June day (PV surplus at midday)."""
    return next(d for d in model.test_days() if d >= 152)
