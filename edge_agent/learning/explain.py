"""Per-feature attributions for one prediction: why did the model say that?

``explain(model_or_learner, x, method=...)`` returns ``{"attributions": ..., "method": ..., "delta": ...}``
and changes nothing: the model is copied before anything touches it (Captum's DeepLift hooks, ``eval()``),
so a serving model never sees a hook or a mode switch. Attributions are shaped like ``x`` (an array for an
array, a ``{feature: value}`` dict for a River-style dict), except for ``permutation`` (one value per
feature: a global importance over a window).

Methods:

* PyTorch ``nn.Module`` (or an object with ``.model`` and ``.model_inputs(x)``, such as
  :class:`edge_agent.learning.forecast.Forecaster`, whose raw windows are scaled first):

  - ``integrated_gradients`` (default; Captum): the path integral of gradients from the baseline to ``x``;
    ``delta`` is the completeness error ``|f(x) - f(baseline) - sum(attributions)|``, 1e-8 on our GRU.
  - ``deeplift`` (Captum; the seed's choice): one backward pass with DeepLift's rescale rules. On an
    ``nn.GRU`` its delta is larger (1e-3 to 3e-2) because the GRU's inner sigmoid/tanh are not modules
    and get no DeepLift rule; reported so the caller can judge.

  The baseline defaults to zeros in model units: for the forecaster (standardised inputs) an "average"
  window. ``x`` is one input (``[window, features]``) or a batch (``[B, window, features]``).

* River learners (``predict_one(dict)``), scikit-learn estimators (``predict(2-D array)``) and plain
  callables ``f(2-D array) -> 1-D array`` (``x``: a dict, or a 1-D array of features):

  - ``coefficients``: linear models only (River ``.weights``, scikit-learn ``.coef_``):
    ``w_i * (x_i - baseline_i)``, exact for a linear model (``delta`` ~ 0);
  - ``occlusion`` (default): ``f(x) - f(x with feature i set to baseline_i)``; baseline = the mean of
    ``window`` when given, else zeros; ``delta`` = ``f(x) - f(baseline) - sum(attributions)`` (non-zero
    when features interact);
  - ``permutation``: needs ``window = (X, y)`` of recent labelled samples: the rise of the mean absolute
    error when feature i is shuffled (mean over ``repeats``); a global importance, ``x`` unused beyond its
    feature names; ``delta`` None.

Needs torch and captum (``pip install 'fedge[train,monitor]'``) for PyTorch models only, imported lazily.
"""

from __future__ import annotations

import copy
import sys
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypedDict

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "METHODS",
    "ExplainError",
    "ExplainUnavailableError",
    "Explanation",
    "explain",
    "to_json",
]

Method = Literal["auto", "integrated_gradients", "deeplift", "coefficients", "occlusion", "permutation"]
METHODS: tuple[str, ...] = (
    "auto",
    "integrated_gradients",
    "deeplift",
    "coefficients",
    "occlusion",
    "permutation",
)
TORCH_METHODS = ("integrated_gradients", "deeplift")
INSTALL_HINT = "pip install 'fedge[train,monitor]'"

# Captum warnings we expect and filter where they are raised (pytest runs with filterwarnings=error):
# DeepLift announces that it hooks non-linear modules (removed afterwards, on our private copy), and it asks
# for inputs that require grad (we set that ourselves; filtered in case a Captum version still warns).
_CAPTUM_WARNINGS = (
    r"Setting forward, backward hooks and attributes on non-linear",
    r"Input Tensor \d+ did not already require gradients",
)

Features = Mapping[str, float]
Window = tuple[Any, Any]


class ExplainError(ValueError):
    """A request that cannot be explained: unknown method, a method the model does not support, an
    input of the wrong shape or with NaN/inf, a missing window."""


class ExplainUnavailableError(ExplainError):
    """torch or captum is not installed on this device (the message says what to install)."""


class Explanation(TypedDict):
    attributions: Any
    """ndarray shaped like ``x``, or ``{feature: value}`` for dict inputs and ``permutation``."""
    method: str
    delta: float | None
    """Completeness error ``|f(x) - f(baseline) - sum(attributions)|`` (max over a batch); None when
    the method has no such property (``permutation``)."""


def to_json(explanation: Explanation) -> dict[str, Any]:
    """The explanation with arrays as (nested) lists, ready for a JSON response."""
    attributions = explanation["attributions"]
    if isinstance(attributions, np.ndarray):
        attributions = attributions.tolist()
    return {"attributions": attributions, "method": explanation["method"], "delta": explanation["delta"]}


def explain(
    model_or_learner: Any,
    x: Any,
    method: Method = "auto",
    *,
    baseline: Any = None,
    window: Window | None = None,
    n_steps: int = 50,
    repeats: int = 5,
    seed: int = 0,
) -> Explanation:
    """Attributions of one prediction (or a batch, for PyTorch) of ``model_or_learner`` at ``x``.

    ``method="auto"``: ``integrated_gradients`` for PyTorch, ``coefficients`` for a linear model, else
    ``occlusion``. See the module docstring for each method, its baseline and its ``delta``.
    """
    if method not in METHODS:
        raise ExplainError(f"unknown method {method!r}; one of {', '.join(METHODS)}")
    module, inputs = _as_torch(model_or_learner, x)
    if module is not None:
        chosen = "integrated_gradients" if method == "auto" else method
        if chosen not in TORCH_METHODS:
            raise ExplainError(
                f"a PyTorch model is explained with {' or '.join(TORCH_METHODS)}, not {chosen}"
            )
        return _explain_torch(module, inputs, chosen, baseline, n_steps)
    if method in TORCH_METHODS:
        raise ExplainError(f"{method} needs a PyTorch model")
    return _explain_tabular(model_or_learner, x, method, baseline, window, repeats, seed)


# ------------------------------------------------------------------------------------------ PyTorch


def _as_torch(obj: Any, x: Any) -> tuple[Any, Any]:
    """(module, model inputs) when ``obj`` is a torch model (or wraps one with ``model_inputs``)."""
    torch = sys.modules.get("torch")  # a torch model implies torch is imported: never import it here
    if torch is None:
        return None, x
    if isinstance(obj, torch.nn.Module):
        return obj, x
    inner = getattr(obj, "model", None)
    if isinstance(inner, torch.nn.Module) and callable(getattr(obj, "model_inputs", None)):
        arr = _finite_array(x)
        single = arr.ndim == 2
        try:
            scaled = obj.model_inputs(arr[None] if single else arr)
        except ValueError as exc:  # the wrapper's own input check (e.g. ForecastError)
            raise ExplainError(str(exc)) from exc
        return inner, scaled[0] if single else scaled
    return None, x


def _captum() -> Any:
    try:
        import captum.attr
    except ImportError as exc:
        raise ExplainUnavailableError(
            f"explaining a PyTorch model needs captum (no module {exc.name!r}); "
            f"install it with: {INSTALL_HINT}"
        ) from exc
    return captum.attr


def _explain_torch(module: Any, x: Any, method: str, baseline: Any, n_steps: int) -> Explanation:
    import torch

    attr = _captum()
    arr = _finite_array(x)
    single = arr.ndim == 2
    batch = arr[None] if single else arr
    if batch.ndim != 3:
        raise ExplainError(
            f"expected one input [window, features] or a batch [B, window, features], got {arr.shape}"
        )
    base = np.zeros_like(batch) if baseline is None else np.broadcast_to(_finite_array(baseline), batch.shape)
    model = copy.deepcopy(
        module
    ).eval()  # hooks and eval() on a private copy: the caller's model is untouched
    inputs = torch.as_tensor(batch, dtype=torch.float32).requires_grad_(True)
    baselines = torch.as_tensor(np.ascontiguousarray(base), dtype=torch.float32)
    with warnings.catch_warnings():
        for message in _CAPTUM_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=UserWarning)
        if method == "deeplift":
            result, delta = attr.DeepLift(model).attribute(
                inputs, baselines=baselines, return_convergence_delta=True
            )
        else:
            if n_steps < 2:
                raise ExplainError("n_steps must be at least 2")
            result, delta = attr.IntegratedGradients(model).attribute(
                inputs, baselines=baselines, n_steps=n_steps, return_convergence_delta=True
            )
    values = result.detach().numpy().astype(np.float64)
    return {
        "attributions": values[0] if single else values,
        "method": method,
        "delta": float(delta.detach().abs().max()),
    }


# ------------------------------------------------------------------------------------------ tabular


def _finite_array(values: Any) -> NDArray[np.float64]:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ExplainError(f"the input is not numeric: {exc}") from exc
    if not np.all(np.isfinite(arr)):
        raise ExplainError("the input holds NaN or inf")
    return arr


class _Model:
    """One view of River / scikit-learn / callable models: ``f(2-D array) -> 1-D array`` over named
    features, and the linear coefficients when there are any."""

    def __init__(self, obj: Any, names: Sequence[str] | None) -> None:
        self.obj, self.names = obj, list(names) if names is not None else None

    def predict(self, rows: NDArray[np.float64]) -> NDArray[np.float64]:
        obj = self.obj
        if callable(getattr(obj, "predict_one", None)):
            names = self.names or [str(i) for i in range(rows.shape[1])]
            out = [obj.predict_one(dict(zip(names, map(float, row), strict=True))) for row in rows]
            return np.array([np.nan if v is None else float(v) for v in out], dtype=np.float64)
        if callable(getattr(obj, "predict", None)):
            return np.asarray(obj.predict(rows), dtype=np.float64).reshape(rows.shape[0], -1)[:, 0]
        if callable(obj):
            return np.asarray(obj(rows), dtype=np.float64).reshape(rows.shape[0], -1)[:, 0]
        raise ExplainError(f"cannot predict with a {type(obj).__name__}: no predict_one, predict or __call__")

    def coefficients(self, n: int) -> NDArray[np.float64]:
        obj = self.obj
        weights = getattr(obj, "weights", None)  # River linear models: {feature: weight}
        if isinstance(weights, Mapping):
            names = self.names or [str(i) for i in range(n)]
            return np.array([float(weights.get(name, 0.0)) for name in names], dtype=np.float64)
        coef = getattr(obj, "coef_", None)  # scikit-learn linear models
        if coef is not None:
            arr = np.asarray(coef, dtype=np.float64).reshape(-1)
            if arr.shape[0] != n:
                raise ExplainError(f"the model has {arr.shape[0]} coefficients for {n} features")
            return arr
        raise ExplainError(
            f"coefficients need a linear model; a {type(obj).__name__} has none (use occlusion)"
        )


def _explain_tabular(
    obj: Any, x: Any, method: str, baseline: Any, window: Window | None, repeats: int, seed: int
) -> Explanation:
    names: list[str] | None = None
    if isinstance(x, Mapping):
        names = [str(k) for k in x]
        row = _finite_array([x[k] for k in x])
    else:
        row = _finite_array(x)
    if row.ndim != 1 or row.size == 0:
        raise ExplainError(f"expected one sample: a dict or a 1-D array of features, got shape {row.shape}")
    model = _Model(obj, names)
    win_x, win_y = _window(window, names, row.size)
    if baseline is not None:
        base = _finite_array(
            [baseline[k] for k in names] if names and isinstance(baseline, Mapping) else baseline
        )
        if base.shape != row.shape:
            raise ExplainError(f"the baseline has shape {base.shape}, the input {row.shape}")
    else:
        base = win_x.mean(axis=0) if win_x is not None else np.zeros_like(row)
    if method == "auto":
        linear = isinstance(getattr(obj, "weights", None), Mapping) or getattr(obj, "coef_", None) is not None
        method = "coefficients" if linear else "occlusion"

    delta: float | None
    if method == "permutation":
        if win_x is None or win_y is None:
            raise ExplainError("permutation needs window=(X, y): recent samples with their true values")
        values = _permutation(model, win_x, win_y, repeats, seed)
        delta = None
    else:
        f_x, f_base = model.predict(np.stack([row, base]))
        if method == "coefficients":
            values = model.coefficients(row.size) * (row - base)
        else:  # occlusion
            occluded = np.repeat(row[None], row.size, axis=0)
            np.fill_diagonal(occluded, base)
            values = f_x - model.predict(occluded)
        delta = float(abs(f_x - f_base - values.sum()))
        if not np.all(np.isfinite(values)) or not np.isfinite(delta):
            raise ExplainError("the model gave no finite prediction for this input")
    attributions: Any = dict(zip(names, map(float, values), strict=True)) if names else values
    return {"attributions": attributions, "method": method, "delta": delta}


def _window(
    window: Window | None, names: list[str] | None, n: int
) -> tuple[NDArray[np.float64] | None, NDArray[np.float64] | None]:
    if window is None:
        return None, None
    raw_x, raw_y = window
    if len(raw_x) == 0:
        raise ExplainError("the window is empty")
    if names is not None and isinstance(raw_x[0], Mapping):
        rows = _finite_array([[r[k] for k in names] for r in raw_x])
    else:
        rows = _finite_array(raw_x)
    if rows.ndim != 2 or rows.shape[1] != n:
        raise ExplainError(f"window samples have shape {rows.shape[1:]}, the input has {n} features")
    y = None if raw_y is None else _finite_array(raw_y).reshape(-1)
    if y is not None and y.shape[0] != rows.shape[0]:
        raise ExplainError("the window has a different number of samples and targets")
    return rows, y


def _permutation(
    model: _Model, rows: NDArray[np.float64], y: NDArray[np.float64], repeats: int, seed: int
) -> NDArray[np.float64]:
    if repeats < 1:
        raise ExplainError("repeats must be at least 1")
    rng = np.random.default_rng(seed)
    reference = float(np.mean(np.abs(model.predict(rows) - y)))
    scores = np.zeros(rows.shape[1])
    for j in range(rows.shape[1]):
        for _ in range(repeats):
            shuffled = rows.copy()
            shuffled[:, j] = rng.permutation(shuffled[:, j])
            scores[j] += float(np.mean(np.abs(model.predict(shuffled) - y))) - reference
    return scores / repeats
