"""The grid simulator's own exception tree; callers never need to catch a pandapower error.

GridError
├── GridDataError            the shipped SimBench data cannot be read or lacks a profile
├── DayNotAvailableError     a day outside the year, or a day without PV data (SCR undefined)
├── InvalidActionError       an action index out of range, or of the wrong shape
├── PowerFlowDivergedError   Newton-Raphson did not converge for at least one 15-minute slot
├── PolicyError              a policy file cannot be loaded, or does not match the environment
└── MissingExtraError        an optional dependency is not installed (``pip install 'fedge[grid]'``)
"""

from __future__ import annotations

from collections.abc import Sequence


class GridError(Exception):
    """Base class of every error raised by :mod:`simulator.grid`."""


class GridDataError(GridError):
    """The SimBench data shipped in the ``simbench`` wheel cannot be read or is incomplete."""


class DayNotAvailableError(GridError):
    """The requested day has no usable data (outside the profile year, or no PV generation at all)."""

    def __init__(self, day: int, reason: str) -> None:
        super().__init__(f"day {day} is not available: {reason}")
        self.day = day
        self.reason = reason


class InvalidActionError(GridError):
    """An action that does not name a valid (load, start hour, shift, direction) tuple."""


class PowerFlowDivergedError(GridError):
    """The power flow of at least one slot did not converge; no reward is computed from it."""

    def __init__(self, slots: Sequence[int], detail: str) -> None:
        shown = ", ".join(str(s) for s in list(slots)[:8])
        more = "" if len(slots) <= 8 else f" (+{len(slots) - 8} more)"
        super().__init__(f"power flow did not converge for slot(s) {shown}{more}: {detail}")
        self.slots = tuple(int(s) for s in slots)
        self.detail = detail


class PolicyError(GridError):
    """A stored policy cannot be used with this environment."""


class MissingExtraError(GridError):
    """An optional dependency of the grid simulator is missing."""

    def __init__(self, package: str) -> None:
        super().__init__(f"{package} is not installed; install it with: pip install 'fedge[grid]'")
        self.package = package
