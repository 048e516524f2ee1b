"""Load-shift actions: (controllable load, start hour, shift size, direction).

The seed's action has three parts: which of the 7 controllable loads, the start hour (24), and the share
of that hour's demand to move (1 %, 5 % or 10 %). Moving demand only to the *next* hour cannot bring
evening demand toward the midday PV peak, so by default a fourth part picks the direction (0 = to the
next hour, 1 = to the previous hour); ``bidirectional=False`` gives the seed's 7 x 24 x 3 space.

A shift moves ``fraction`` of the load's demand in each 15-minute slot of the start hour to the same
quarter of the neighbouring hour (p and q alike): the load's daily energy stays constant and demand
only moves between two contiguous hours. A shift that would leave the day (hour 23 later, hour 0
earlier) moves nothing: the step is a documented no-op.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from simulator.grid.errors import InvalidActionError

SHIFT_FRACTIONS: tuple[float, ...] = (0.01, 0.05, 0.10)
HOURS = 24
LATER, EARLIER = 0, 1


@dataclass(frozen=True)
class ShiftAction:
    """A decoded action. ``load`` indexes the controllable loads, not the grid's loads."""

    load: int
    hour: int
    level: int
    direction: int = LATER

    @property
    def fraction(self) -> float:
        return SHIFT_FRACTIONS[self.level]

    @property
    def target_hour(self) -> int | None:
        """The hour that receives the demand, or None when the shift would leave the day."""
        target = self.hour + (1 if self.direction == LATER else -1)
        return target if 0 <= target < HOURS else None


class ActionCodec:
    """Encodes actions for Gymnasium spaces: a MultiDiscrete vector or one flat Discrete index."""

    def __init__(self, n_loads: int, *, bidirectional: bool = True) -> None:
        if n_loads < 1:
            raise ValueError("n_loads must be positive")
        self.n_loads = n_loads
        self.bidirectional = bidirectional
        dims = [n_loads, HOURS, len(SHIFT_FRACTIONS)]
        if bidirectional:
            dims.append(2)
        self.nvec: tuple[int, ...] = tuple(dims)
        self.size = int(np.prod(self.nvec))

    def decode(self, action: int | np.integer | Sequence[int] | NDArray[np.integer]) -> ShiftAction:
        """A ShiftAction from a flat index or a MultiDiscrete vector; InvalidActionError if out of range."""
        if np.ndim(action) == 0 and not isinstance(action, bool):
            scalar = np.asarray(action)
            if scalar.dtype.kind not in "iu":
                raise InvalidActionError(f"flat action must be an integer, got {action!r}")
            index = int(scalar)
            if not 0 <= index < self.size:
                raise InvalidActionError(f"flat action {index} is outside 0..{self.size - 1}")
            parts = [int(x) for x in np.unravel_index(index, self.nvec)]
        else:
            array = np.asarray(action)
            if array.shape != (len(self.nvec),):
                raise InvalidActionError(
                    f"action must be {len(self.nvec)} integers {self.nvec}, got shape {array.shape}"
                )
            numeric = array.dtype.kind in "iu" or (
                array.dtype.kind == "f"
                and bool(np.all(np.isfinite(array)))
                and bool(np.all(array == np.round(array)))
            )
            if not numeric:
                raise InvalidActionError(f"action parts must be integers, got {array.tolist()}")
            parts = [int(x) for x in array]
            for value, bound, what in zip(
                parts, self.nvec, ("load", "hour", "shift level", "direction"), strict=False
            ):
                if not 0 <= value < bound:
                    raise InvalidActionError(f"{what} {value} is outside 0..{bound - 1}")
        direction = parts[3] if self.bidirectional else LATER
        return ShiftAction(load=parts[0], hour=parts[1], level=parts[2], direction=direction)

    def encode_multi(self, shift: ShiftAction) -> NDArray[np.int64]:
        parts = [shift.load, shift.hour, shift.level]
        if self.bidirectional:
            parts.append(shift.direction)
        return np.asarray(parts, dtype=np.int64)

    def encode_flat(self, shift: ShiftAction) -> int:
        return int(np.ravel_multi_index(tuple(int(x) for x in self.encode_multi(shift)), self.nvec))
