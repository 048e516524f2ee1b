"""Model sessions: health check on a sample input, warm-up, and a hot swap that never drops requests
(an in-flight call keeps the session it started with; the swap only replaces the reference)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.runtime.providers import available_providers, select_providers

_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


class HealthCheckFailed(Exception):
    """The model did not load or did not run on its sample input."""


class InferenceError(Exception):
    """Bad inputs for the active model, or no model is active."""


def open_session(path: Path, providers: Sequence[str] | None = None) -> Any:
    import onnxruntime

    chosen = select_providers(available_providers(), providers)
    return onnxruntime.InferenceSession(str(path), providers=chosen)


def _dtype(type_name: str) -> Any:
    return _DTYPES.get(type_name, np.float32)


def sample_feed(session: Any, sample_input: Any = None) -> dict[str, Any]:
    """The declared sample input (``{name: nested list}``, or a nested list for a single input), else
    zeros of each input's declared shape (dynamic dimensions -> 1)."""
    inputs = session.get_inputs()
    if sample_input is not None:
        if not isinstance(sample_input, dict):
            sample_input = {inputs[0].name: sample_input}
        return {i.name: np.asarray(sample_input[i.name], dtype=_dtype(i.type)) for i in inputs}
    return {
        i.name: np.zeros([d if isinstance(d, int) and d > 0 else 1 for d in i.shape], dtype=_dtype(i.type))
        for i in inputs
    }


def health_check(path: Path, sample_input: Any = None, providers: Sequence[str] | None = None) -> Any:
    """Load the model and run it once on its sample input; returns the session (warm) or raises."""
    try:
        session = open_session(path, providers)
        session.run(None, sample_feed(session, sample_input))
    except Exception as exc:  # ORT raises its own, numpy ValueError/KeyError: all mean "not healthy"
        raise HealthCheckFailed(f"{type(exc).__name__}: {exc}") from exc
    return session


@dataclass(frozen=True)
class Active:
    model_id: str
    version: int
    sha256: str
    session: Any


class ModelRuntime:
    """The model being served. ``swap`` loads and warms up first, then replaces the reference."""

    def __init__(self, providers: Sequence[str] | None = None) -> None:
        self.providers = list(providers) if providers else None
        self._active: Active | None = None
        self._lock = threading.Lock()

    @property
    def active(self) -> Active | None:
        return self._active

    def swap(self, model_id: str, version: int, sha256: str, path: Path, session: Any = None) -> None:
        if session is None:
            session = health_check(path, None, self.providers)  # load + warm-up run
        with self._lock:
            self._active = Active(model_id, version, sha256, session)

    def clear(self) -> None:
        with self._lock:
            self._active = None

    def infer(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """``{name: nested list}`` in, ``{name: nested list}`` out (``/v1/infer``): a layer over ``run``."""
        active = self._active
        if active is None:
            raise InferenceError("no model is active on this device yet")
        feed = {}
        for i in active.session.get_inputs():
            if i.name not in inputs:
                raise InferenceError(f"missing input '{i.name}'")
            try:
                feed[i.name] = np.asarray(inputs[i.name], dtype=_dtype(i.type))
            except (ValueError, TypeError) as exc:
                raise InferenceError(f"input '{i.name}': {exc}") from exc
        _, outputs = self.run(feed, active=active)
        return {n: r.tolist() for n, r in outputs.items()}

    def run(
        self, feed: dict[str, np.ndarray], names: Sequence[str] | None = None, active: Active | None = None
    ) -> tuple[Active, dict[str, np.ndarray]]:
        """Arrays in, arrays out on the active model (or ``active``: the one a caller already read); the
        outputs named (default: all, in the model's order). Returns the model that ran and its outputs."""
        active = active or self._active  # one read: a concurrent swap cannot change the session in use
        if active is None:
            raise InferenceError("no model is active on this device yet")
        session = active.session
        wanted = list(names) if names else [o.name for o in session.get_outputs()]
        try:
            results = session.run(wanted, feed)
        except Exception as exc:  # ORT's own exception types (shape/type errors)
            raise InferenceError(str(exc)) from exc
        return active, {n: np.asarray(r) for n, r in zip(wanted, results, strict=True)}
