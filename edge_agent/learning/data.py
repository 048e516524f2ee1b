"""A device's local training data: an ``.npz`` file that stays on the device.

The file holds ``x`` (float, ``[N, ...]``, e.g. ``[N, 1, 8, 8]`` digits) and ``y`` (integer class labels,
``[N]``), and optionally ``x_test``/``y_test`` for evaluating the global model on the device; without
them evaluation runs on ``x``/``y`` (and its loss and accuracy, computed on training data, are not
covered by local DP). Only parameters and aggregate metrics ever leave the device, never these arrays.
Everything is validated on load (:class:`DataError` says what is wrong): shapes that agree, numeric
dtypes, no NaN or infinity, labels in ``[0, num_classes)``.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

__all__ = ["DataError", "LocalData", "load_local_data", "validate_arrays"]


class DataError(ValueError):
    """The local dataset is missing or malformed."""


@dataclass(frozen=True)
class LocalData:
    """Validated local arrays: training split and evaluation split (may be the same arrays)."""

    x: NDArray[np.float32]
    y: NDArray[np.int64]
    x_test: NDArray[np.float32]
    y_test: NDArray[np.int64]

    @property
    def num_examples(self) -> int:
        return len(self.y)

    @property
    def num_test_examples(self) -> int:
        return len(self.y_test)


def validate_arrays(
    x: object, y: object, *, name: str = "x", num_classes: int | None = None
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """Check one ``(x, y)`` pair and return it as contiguous float32 / int64 arrays."""
    if not isinstance(x, np.ndarray) or not isinstance(y, np.ndarray):
        raise DataError(f"{name} and its labels must be arrays")
    label = "y" if name == "x" else f"y{name[1:]}"
    if x.ndim < 2:
        raise DataError(f"{name} must be [N, features...], got shape {x.shape}")
    if len(x) == 0:
        raise DataError(f"{name} is empty")
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"{label} must be [N] with N = {len(x)} (from {name}), got shape {y.shape}")
    if x.dtype.kind not in "fiub":
        raise DataError(f"{name} must be numeric, got dtype {x.dtype}")
    if y.dtype.kind not in "iub":
        if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        else:
            raise DataError(f"{label} must hold integer class labels, got dtype {y.dtype}")
    xf = np.ascontiguousarray(x, dtype=np.float32)
    if not np.all(np.isfinite(xf)):
        bad = int(np.count_nonzero(~np.isfinite(xf)))
        raise DataError(f"{name} holds {bad} NaN or infinite values")
    yi = np.ascontiguousarray(y, dtype=np.int64)
    if yi.min() < 0 or (num_classes is not None and yi.max() >= num_classes):
        bound = f"[0, {num_classes})" if num_classes is not None else "non-negative"
        raise DataError(f"{label} labels must be {bound}, got {int(yi.min())}..{int(yi.max())}")
    return xf, yi


def load_local_data(path: str | Path, *, num_classes: int | None = None) -> LocalData:
    """Read and validate the device's ``.npz`` (no pickles are loaded)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"local dataset {str(path)!r} does not exist")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"local dataset {str(path)!r} is not a readable .npz: {exc}") from exc
    missing = [key for key in ("x", "y") if key not in arrays]
    if missing:
        raise DataError(f"local dataset {str(path)!r} lacks {missing} (has {sorted(arrays)})")
    x, y = validate_arrays(arrays["x"], arrays["y"], num_classes=num_classes)
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise DataError("x_test and y_test must come together")
    if "x_test" in arrays:
        x_test, y_test = validate_arrays(
            arrays["x_test"], arrays["y_test"], name="x_test", num_classes=num_classes
        )
        if x_test.shape[1:] != x.shape[1:]:
            raise DataError(f"x_test examples are {x_test.shape[1:]}, x examples are {x.shape[1:]}")
    else:
        x_test, y_test = x, y
    return LocalData(x=x, y=y, x_test=x_test, y_test=y_test)
