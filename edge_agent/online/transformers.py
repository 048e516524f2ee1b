"""Use-case transformers (the seed's pre/post-processing step): a JSON message in, features (and the
samples that are now labelled) out; a prediction out, friendly JSON back. Registered by name.

A transformer never changes its state in :meth:`Transformer.prepare`: it validates the message (raising
:class:`~edge_agent.online.errors.RejectedInput`) and returns what the message would change; the learner
calls :meth:`Transformer.commit` only once it accepted the message. Built in:

``features``
    ``{"x": [f1, ...], "y": label?, "timestamp": t?}``: the features as given; with ``y`` the message is
    also a labelled sample (predict, then learn). Timestamps, when present, must increase.
``smart_meter``
    the UC10 stream ``{"timestamp": ISO 8601 or epoch seconds, "consumption": float}`` every ``interval``
    seconds. Features: the last ``lags`` readings (+ hour-of-day and day-of-week of the target time, as
    sin/cos, when ``calendar``); target: the reading ``horizon`` steps later (default 36 lags, 96 steps =
    24 h ahead at 15 min). A forecast waits in a pending queue until its target reading arrives, then
    becomes a labelled sample. Gaps of at most ``max_gap`` steps are filled by linear interpolation;
    longer gaps restart the window.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from edge_agent.online.base import Label
from edge_agent.online.errors import Reason, RejectedInput, Repair


@dataclass
class Prepared:
    """What one accepted message means: a query to predict on, the samples it labels, its time."""

    query: np.ndarray | None
    labelled: list[tuple[np.ndarray, Label]]
    timestamp: float | None = None
    repairs: list[Repair] = field(default_factory=list)
    change: Any = None
    """The transformer's state change, applied by :meth:`Transformer.commit`."""


class Transformer(ABC):
    """Pre/post-processing for one use case."""

    name = "transformer"
    n_features: int | None = None
    """The feature count (None until the first message fixes it, for transformers that allow that)."""

    @abstractmethod
    def prepare(self, message: dict[str, Any]) -> Prepared:
        """Validate and transform one message; no state changes (raise RejectedInput to refuse)."""

    def commit(self, prepared: Prepared) -> None:  # noqa: B027 - stateless transformers need nothing
        """Apply the state change of an accepted message."""

    def peek(self, message: dict[str, Any]) -> Prepared:
        """For a predict-only request: like :meth:`prepare`, never committed."""
        return self.prepare(message)

    @abstractmethod
    def present(self, prediction: Label | None, prepared: Prepared) -> dict[str, Any]:
        """The friendly JSON for a prediction."""

    def state(self) -> dict[str, Any]:
        """JSON-able state for checkpoints."""
        return {}

    def restore(self, state: dict[str, Any]) -> None:  # noqa: B027 - stateless transformers need nothing
        """Put back what :meth:`state` returned."""


TRANSFORMERS: dict[str, type[Transformer]] = {}


def register_transformer(name: str) -> Callable[[type[Transformer]], type[Transformer]]:
    """Class decorator: make a transformer available under ``name`` in learner configs."""

    def add(cls: type[Transformer]) -> type[Transformer]:
        if name in TRANSFORMERS and TRANSFORMERS[name] is not cls:
            raise ValueError(f"a transformer named {name!r} is already registered")
        cls.name = name
        TRANSFORMERS[name] = cls
        return cls

    return add


def make_transformer(name: str, options: dict[str, Any]) -> Transformer:
    """The transformer registered as ``name``, made with ``options`` (ValueError when they do not fit)."""
    cls = TRANSFORMERS.get(name)
    if cls is None:
        raise ValueError(f"no transformer named {name!r} (registered: {sorted(TRANSFORMERS)})")
    try:
        return cls(**options)
    except TypeError as exc:
        raise ValueError(f"transformer {name!r}: {exc}") from exc


# ---------------------------------------------------------------------- helpers
def number(value: Any, what: str) -> float:
    """A finite float from JSON (booleans are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RejectedInput(Reason.INVALID_MESSAGE, f"{what} must be a number, not {type(value).__name__}")
    result = float(value)
    if not math.isfinite(result):
        raise RejectedInput(Reason.NON_FINITE, f"{what} is {result}")
    return result


def timestamp(value: Any, what: str = "timestamp") -> float:
    """Epoch seconds from a number or an ISO 8601 string (naive times are UTC)."""
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError as exc:
            raise RejectedInput(Reason.INVALID_MESSAGE, f"{what} {value!r} is not ISO 8601") from exc
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
    return number(value, what)


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def vector(value: Any, what: str, expected: int | None) -> np.ndarray:
    """A finite feature vector of ``expected`` length (any length when None)."""
    if not isinstance(value, list):
        raise RejectedInput(Reason.INVALID_MESSAGE, f"{what} must be a list of numbers")
    if expected is not None and len(value) != expected:
        raise RejectedInput(
            Reason.WRONG_FEATURE_COUNT, f"{what} has {len(value)} features, expected {expected}"
        )
    if not value:
        raise RejectedInput(Reason.WRONG_FEATURE_COUNT, f"{what} is empty")
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int | float):
            raise RejectedInput(Reason.INVALID_MESSAGE, f"{what} must hold numbers only")
    x = np.asarray(value, dtype=np.float64)
    if not np.isfinite(x).all():
        raise RejectedInput(Reason.NON_FINITE, f"{what} holds NaN or infinity")
    return x


def check_order(ts: float, last: float | None) -> None:
    if last is None:
        return
    if ts < last:
        raise RejectedInput(Reason.OUT_OF_ORDER, f"timestamp {iso(ts)} is before the last one, {iso(last)}")
    if ts == last:
        raise RejectedInput(Reason.DUPLICATE_TIMESTAMP, f"timestamp {iso(ts)} was seen already")


# ------------------------------------------------------------------ built-ins
@register_transformer("features")
class FeaturesTransformer(Transformer):
    """The features as given (see the module docstring)."""

    def __init__(
        self, n_features: int | None = None, field: str = "x", label: str = "y", time: str = "timestamp"
    ) -> None:
        if n_features is not None and n_features < 1:
            raise ValueError("n_features must be at least 1")
        self.n_features, self.field, self.label, self.time = n_features, field, label, time
        self.last_ts: float | None = None

    def prepare(self, message: dict[str, Any]) -> Prepared:
        if self.field not in message:
            raise RejectedInput(Reason.INVALID_MESSAGE, f"the message has no {self.field!r} field")
        x = vector(message[self.field], self.field, self.n_features)
        ts = None
        if message.get(self.time) is not None:
            ts = timestamp(message[self.time], self.time)
            check_order(ts, self.last_ts)
        labelled: list[tuple[np.ndarray, Label]] = []
        if message.get(self.label) is not None:
            labelled.append((x, message[self.label]))
        return Prepared(query=x, labelled=labelled, timestamp=ts, change=len(x))

    def commit(self, prepared: Prepared) -> None:
        if self.n_features is None:
            self.n_features = int(prepared.change)
        if prepared.timestamp is not None:
            self.last_ts = prepared.timestamp

    def present(self, prediction: Label | None, prepared: Prepared) -> dict[str, Any]:
        return {"prediction": prediction}

    def state(self) -> dict[str, Any]:
        return {"n_features": self.n_features, "last_ts": self.last_ts}

    def restore(self, state: dict[str, Any]) -> None:
        self.n_features, self.last_ts = state.get("n_features", self.n_features), state.get("last_ts")


@dataclass
class _MeterChange:
    reset: bool
    window: list[float]
    last_step: int
    matured: int
    pending: list[tuple[int, np.ndarray]]


@register_transformer("smart_meter")
class SmartMeterTransformer(Transformer):
    """The UC10 consumption stream (see the module docstring)."""

    def __init__(
        self,
        lags: int = 36,
        horizon: int = 96,
        interval: float = 900.0,
        max_gap: int = 4,
        value: str = "consumption",
        time: str = "timestamp",
        calendar: bool = True,
    ) -> None:
        if lags < 1 or horizon < 1 or interval <= 0 or max_gap < 0:
            raise ValueError("lags and horizon must be >= 1, interval > 0, max_gap >= 0")
        self.lags, self.horizon, self.interval, self.max_gap = lags, horizon, float(interval), max_gap
        self.value, self.time, self.calendar = value, time, calendar
        self.n_features = lags + (4 if calendar else 0)
        self.window: deque[float] = deque(maxlen=lags)
        self.pending: deque[tuple[int, np.ndarray]] = deque()
        self.last_step: int | None = None

    def _features(self, window: list[float] | deque[float], target_step: int) -> np.ndarray:
        values = list(window)
        if self.calendar:
            t = target_step * self.interval
            day = (t % 86400.0) / 86400.0 * 2 * math.pi
            week = (((t // 86400.0) + 3) % 7) / 7 * 2 * math.pi  # 1970-01-01 was a Thursday; Monday = 0
            values += [math.sin(day), math.cos(day), math.sin(week), math.cos(week)]
        return np.asarray(values, dtype=np.float64)

    def _reading(self, message: dict[str, Any]) -> tuple[float, float, int]:
        for key in (self.time, self.value):
            if key not in message:
                raise RejectedInput(Reason.INVALID_MESSAGE, f"the message has no {key!r} field")
        ts = timestamp(message[self.time], self.time)
        value = number(message[self.value], self.value)
        step = round(ts / self.interval)
        if self.last_step is not None:
            check_order(float(step), float(self.last_step))
        return ts, value, step

    def prepare(self, message: dict[str, Any]) -> Prepared:
        ts, value, step = self._reading(message)
        repairs: list[Repair] = []
        steps: list[tuple[int, float]] = [(step, value)]
        reset = False
        if self.last_step is not None and self.window:
            gap = step - self.last_step - 1
            if 0 < gap <= self.max_gap:
                last = self.window[-1]
                fill = [
                    (self.last_step + i, last + (value - last) * i / (gap + 1)) for i in range(1, gap + 1)
                ]
                steps = fill + steps
                repairs.append(Repair.GAP_FILLED)
            elif gap > self.max_gap:
                reset = True
                repairs.append(Repair.GAP_RESET)
        window: deque[float] = deque([] if reset else self.window, maxlen=self.lags)
        pending_view = [] if reset else self.pending
        matured = 0
        labelled: list[tuple[np.ndarray, Label]] = []
        created: deque[tuple[int, np.ndarray]] = deque()  # all after the old ones (targets increase)
        query: np.ndarray | None = None
        for s, v in steps:
            while matured < len(pending_view) and pending_view[matured][0] <= s:
                target, x = pending_view[matured]
                if target == s:
                    labelled.append((x, v))
                matured += 1
            while created and created[0][0] <= s:  # only when horizon <= the gap just filled
                target, x = created.popleft()
                if target == s:
                    labelled.append((x, v))
            window.append(v)
            if len(window) == self.lags:
                query = self._features(window, s + self.horizon)
                created.append((s + self.horizon, query))
        change = _MeterChange(reset, list(window), step, matured, list(created))
        return Prepared(query=query, labelled=labelled, timestamp=ts, repairs=repairs, change=change)

    def commit(self, prepared: Prepared) -> None:
        change: _MeterChange = prepared.change
        if change.reset:
            self.pending.clear()
        for _ in range(change.matured):
            self.pending.popleft()
        self.pending.extend(change.pending)
        self.window = deque(change.window, maxlen=self.lags)
        self.last_step = change.last_step

    def peek(self, message: dict[str, Any]) -> Prepared:
        """With a reading: the forecast it would give; without one: the forecast from the current window."""
        if self.value in message:
            return self.prepare(message)
        if self.last_step is None or len(self.window) < self.lags:
            return Prepared(query=None, labelled=[], timestamp=None)
        query = self._features(self.window, self.last_step + self.horizon)
        return Prepared(query=query, labelled=[], timestamp=self.last_step * self.interval)

    def present(self, prediction: Label | None, prepared: Prepared) -> dict[str, Any]:
        out: dict[str, Any] = {
            "timestamp": iso(prepared.timestamp) if prepared.timestamp is not None else None
        }
        if prediction is None:
            have = (
                len(prepared.change.window) if isinstance(prepared.change, _MeterChange) else len(self.window)
            )
            out.update({self.value: None, "warming_up": f"{min(have, self.lags)}/{self.lags} readings"})
            return out
        step = round((prepared.timestamp or 0.0) / self.interval) + self.horizon
        out.update(
            {
                "forecast_for": iso(step * self.interval),
                "horizon_s": self.horizon * self.interval,
                self.value: prediction,
            }
        )
        return out

    def state(self) -> dict[str, Any]:
        return {
            "window": list(self.window),
            "last_step": self.last_step,
            "pending": [[s, x.tolist()] for s, x in self.pending],
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.window = deque(state.get("window", []), maxlen=self.lags)
        self.last_step = state.get("last_step")
        self.pending = deque((int(s), np.asarray(x, dtype=np.float64)) for s, x in state.get("pending", []))
