"""The translation package's own exceptions; nothing from torch, skl2onnx or ONNX Runtime leaks out.

TranslationError
├── UnsupportedFramework   model.json names a framework (or the artifact a format) we cannot translate
├── InvalidInput           model.json, the samples or the labels are unusable
├── TranslationFailed      the artifact could not be loaded, exported or run (``reason`` says which)
│   └── TranslationTimeout the isolated worker ran out of time and was killed
└── TranslationRejected    the ONNX model disagrees with the source by more than the tolerance

Each error round-trips through ``to_json`` / ``error_from_json`` so that a worker subprocess can report it
and ``translate_in_subprocess`` can raise the same class in the parent.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


class TranslationError(Exception):
    """Base of every error raised by ``controller.translation``."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def to_json(self) -> dict[str, Any]:
        """A JSON-able description: ``{"error": class name, "detail": ..., **fields}``."""
        return {"error": type(self).__name__, "detail": self.detail, **self._fields()}

    def _fields(self) -> dict[str, Any]:
        return {}


class UnsupportedFramework(TranslationError):
    """The artifact's framework or format is not one we translate."""

    def __init__(self, framework: str, supported: Sequence[str], detail: str | None = None) -> None:
        self.framework = framework
        self.supported = tuple(supported)
        super().__init__(
            detail or f"cannot translate framework {framework!r}; supported: {', '.join(self.supported)}"
        )

    def _fields(self) -> dict[str, Any]:
        return {"framework": self.framework, "supported": list(self.supported)}


class InvalidInput(TranslationError):
    """model.json, the samples or the labels are unusable."""


class TranslationFailed(TranslationError):
    """Loading, exporting or running a model failed; ``detail`` names the step and the cause."""


class TranslationTimeout(TranslationFailed):
    """The isolated translation worker did not finish within ``timeout_s`` and was killed."""

    def __init__(self, timeout_s: float, detail: str | None = None) -> None:
        self.timeout_s = timeout_s
        super().__init__(
            detail or f"translation did not finish within {timeout_s:g} s; the worker was killed"
        )

    def _fields(self) -> dict[str, Any]:
        return {"timeout_s": self.timeout_s}


class TranslationRejected(TranslationError):
    """The ONNX model's outputs differ from the source model's by more than ``tolerance``."""

    def __init__(self, max_abs_diff: float, tolerance: float, detail: str | None = None) -> None:
        self.max_abs_diff = max_abs_diff
        self.tolerance = tolerance
        super().__init__(
            detail
            or f"ONNX outputs differ from the source's by up to {max_abs_diff:.3g} (tolerance {tolerance:g})"
        )

    def _fields(self) -> dict[str, Any]:
        # JSON has no infinity: a shape mismatch or NaN is reported as null and read back as inf
        return {
            "max_abs_diff": self.max_abs_diff if math.isfinite(self.max_abs_diff) else None,
            "tolerance": self.tolerance,
        }


def error_from_json(data: dict[str, Any]) -> TranslationError:
    """The exception that ``TranslationError.to_json`` described (``TranslationFailed`` if unknown)."""
    kind, detail = str(data.get("error", "")), str(data.get("detail", "unknown error"))
    if kind == "UnsupportedFramework":
        return UnsupportedFramework(str(data.get("framework")), list(data.get("supported", [])), detail)
    if kind == "TranslationRejected":
        diff = data.get("max_abs_diff")
        return TranslationRejected(
            math.inf if diff is None else float(diff), float(data["tolerance"]), detail
        )
    if kind == "TranslationTimeout":
        return TranslationTimeout(float(data.get("timeout_s", 0.0)), detail)
    if kind == "InvalidInput":
        return InvalidInput(detail)
    return TranslationFailed(detail)
