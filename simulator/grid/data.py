"""SimBench load and RES profiles, read straight from the CSV files the ``simbench`` wheel ships.

The wheel carries the complete SimBench data set (``1-complete_data-mixed-all-2-sw``): one year (2016,
366 days) of 15-minute values. Load profiles are relative to a load's rated power (``<name>_pload`` and
``<name>_qload`` columns), RES profiles relative to a plant's rated power. Nothing is downloaded.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from simulator.grid.errors import GridDataError, MissingExtraError

SLOTS_PER_DAY = 96
"""15-minute slots in a day."""
SLOT_HOURS = 0.25
"""Length of one slot in hours."""
PROFILE_YEAR = 2016
DAYS_IN_YEAR = 366
"""SimBench profiles cover the leap year 2016."""
_DATA_SET = "1-complete_data-mixed-all-2-sw"


def simbench_data_dir() -> Path:
    """The folder inside the installed ``simbench`` package that holds the complete data set."""
    spec = importlib.util.find_spec("simbench")
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtraError("simbench")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "networks" / _DATA_SET
        if (candidate / "LoadProfile.csv").is_file() and (candidate / "RESProfile.csv").is_file():
            return candidate
    raise GridDataError(f"the simbench package has no {_DATA_SET} data set with profile files")


def _read_columns(path: Path, columns: Sequence[str]) -> dict[str, NDArray[np.float64]]:
    import pandas as pd  # lazy: pandas is part of the grid extra

    with path.open("r", encoding="utf-8") as handle:
        header = handle.readline().strip().split(";")
    missing = sorted(set(columns) - set(header))
    if missing:
        raise GridDataError(f"{path.name} has no column(s) {', '.join(missing)}")
    frame = pd.read_csv(path, sep=";", usecols=list(columns), dtype=np.float64)
    expected = DAYS_IN_YEAR * SLOTS_PER_DAY
    if len(frame) != expected:
        raise GridDataError(f"{path.name} has {len(frame)} rows, expected {expected} (one year of 15 min)")
    return {
        name: frame[name].to_numpy(dtype=np.float64).reshape(DAYS_IN_YEAR, SLOTS_PER_DAY) for name in columns
    }


@functools.lru_cache(maxsize=8)
def _load_profiles_cached(
    names: tuple[str, ...],
) -> dict[str, tuple[NDArray[np.float64], NDArray[np.float64]]]:
    columns = [f"{n}_{kind}" for n in names for kind in ("pload", "qload")]
    table = _read_columns(simbench_data_dir() / "LoadProfile.csv", columns)
    return {n: (table[f"{n}_pload"], table[f"{n}_qload"]) for n in names}


@functools.lru_cache(maxsize=8)
def _res_profiles_cached(names: tuple[str, ...]) -> dict[str, NDArray[np.float64]]:
    return _read_columns(simbench_data_dir() / "RESProfile.csv", list(names))


def load_profiles(names: Sequence[str]) -> dict[str, tuple[NDArray[np.float64], NDArray[np.float64]]]:
    """Relative (p, q) load profiles by SimBench name, each shaped (366 days, 96 slots). Read-only."""
    result = _load_profiles_cached(tuple(sorted(set(names))))
    for p, q in result.values():
        p.setflags(write=False)
        q.setflags(write=False)
    return result


def res_profiles(names: Sequence[str]) -> dict[str, NDArray[np.float64]]:
    """Relative RES (e.g. ``PV1``..``PV8``) profiles by SimBench name, each shaped (366, 96). Read-only."""
    result = _res_profiles_cached(tuple(sorted(set(names))))
    for values in result.values():
        values.setflags(write=False)
    return result
