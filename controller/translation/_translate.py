"""translate(): artifact -> ONNX file, validated against the source model on held-out samples."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from controller.translation._quantize import make_session, quantize_model, run_session, top1
from controller.translation._result import TranslationResult
from controller.translation._sources import SourceModel, load_source, prepare_samples
from controller.translation.errors import (
    InvalidInput,
    TranslationError,
    TranslationFailed,
    TranslationRejected,
)

DEFAULT_TOLERANCE = 1e-4
DEFAULT_OPSET = 18
ONNX_NAME = "model.onnx"
RESULT_NAME = "translation.json"


def max_abs_diff(expected: NDArray[Any], actual: NDArray[Any]) -> float:
    """Largest absolute difference; ``inf`` when the shapes differ or any value is not finite."""
    expected, actual = np.asarray(expected), np.asarray(actual)
    if expected.shape != actual.shape:
        return math.inf
    if expected.size == 0:
        return 0.0
    diff = float(np.max(np.abs(expected.astype(np.float64) - actual.astype(np.float64))))
    return diff if math.isfinite(diff) else math.inf


def check_equivalence(
    source: SourceModel,
    onnx_path: Path,
    samples: Any,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    output_name: str | None = None,
    threads: int = 1,
) -> float | None:
    """Run ``source`` and ONNX Runtime on ``samples``; return the max abs difference of their outputs.

    Raises ``TranslationRejected`` when it exceeds ``tolerance`` (or the shapes differ) and
    ``TranslationFailed`` when the ONNX model does not run. Returns None when the source cannot be run here
    (an ONNX source with operators that the reference evaluator lacks).
    """
    x = prepare_samples(samples, source.meta)
    name = output_name or source.meta.output_name or _first_output(onnx_path, threads)
    onnx_out = _run_onnx(onnx_path, source.meta.input_name, name, x, threads)
    source_out = source.predict(x)
    return None if source_out is None else _within_tolerance(source_out, onnx_out, tolerance)


def _within_tolerance(source_out: NDArray[Any], onnx_out: NDArray[Any], tolerance: float) -> float:
    """The max abs difference, or ``TranslationRejected`` when it exceeds ``tolerance``."""
    diff = max_abs_diff(source_out, onnx_out)
    if diff > tolerance:
        detail = None
        if np.shape(source_out) != np.shape(onnx_out):
            detail = (
                f"ONNX output shape {np.shape(onnx_out)} differs from the source's {np.shape(source_out)}"
            )
        raise TranslationRejected(diff, tolerance, detail)
    return diff


def _first_output(onnx_path: Path, threads: int) -> str:
    try:
        return str(make_session(onnx_path, threads).get_outputs()[0].name)
    except Exception as exc:
        raise TranslationFailed(f"ONNX Runtime cannot load {onnx_path.name}: {exc}") from exc


def _run_onnx(
    onnx_path: Path, input_name: str, output_name: str, x: NDArray[Any], threads: int
) -> NDArray[Any]:
    try:
        session = make_session(onnx_path, threads)
    except Exception as exc:
        raise TranslationFailed(f"ONNX Runtime cannot load {onnx_path.name}: {exc}") from exc
    try:
        return run_session(session, input_name, output_name, x)
    except Exception as exc:
        raise TranslationFailed(f"ONNX Runtime failed on the samples: {exc}") from exc


def _accuracy(outputs: NDArray[Any], labels: NDArray[Any], classes: tuple[Any, ...] | None) -> float | None:
    if outputs.ndim != 2:
        return None
    return float(np.mean(top1(outputs, classes) == labels))


def _opset(onnx_path: Path) -> int:
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def translate(
    artifact: Path,
    model_json: dict[str, Any],
    samples: Any,
    *,
    labels: Any | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    quantize: bool = False,
    out_dir: Path,
    opset: int = DEFAULT_OPSET,
    allow_pickle: bool = False,
    threads: int = 1,
) -> TranslationResult:
    """Translate ``artifact`` (described by ``model_json``) to ``out_dir/model.onnx`` and validate it.

    The source model and ONNX Runtime both run on ``samples`` (held-out inputs, reshaped to the model's
    input shape if their size per sample fits); a max abs difference above ``tolerance`` deletes the ONNX
    file and raises ``TranslationRejected``. With ``labels``, both models' top-1 accuracies are reported.
    With ``quantize``, an int8 variant is tried (see ``_quantize``). The result is also written to
    ``out_dir/translation.json``. Pickled scikit-learn models load only with ``allow_pickle`` (run such
    artifacts through ``translate_in_subprocess``). ``threads`` is ONNX Runtime's intra-op thread count.
    """
    started = time.perf_counter()
    if not (tolerance >= 0 and math.isfinite(tolerance)):
        raise InvalidInput(f"tolerance must be a finite number >= 0, got {tolerance}")
    source = load_source(Path(artifact), model_json, allow_pickle=allow_pickle)
    x = prepare_samples(samples, source.meta)
    y: NDArray[Any] | None = None
    if labels is not None:
        y = np.asarray(labels)
        if y.shape != (len(x),):
            raise InvalidInput(f"labels must have shape ({len(x)},), got {y.shape}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / ONNX_NAME
    output_name = source.to_onnx(onnx_path, opset)

    notes: list[str] = []
    diff: float | None = None
    try:
        onnx_out = _run_onnx(onnx_path, source.meta.input_name, output_name, x, threads)
        source_out = source.predict(x)
        if source_out is not None:
            diff = _within_tolerance(source_out, onnx_out, tolerance)
    except TranslationError:
        onnx_path.unlink(missing_ok=True)  # never leave a model that failed validation where it looks usable
        raise
    if source_out is None:
        notes.append("the ONNX reference evaluator cannot run this model: outputs were not cross-checked")

    source_accuracy = onnx_accuracy = None
    if y is not None:
        onnx_accuracy = _accuracy(onnx_out, y, source.classes)
        source_accuracy = _accuracy(source_out, y, source.classes) if source_out is not None else None
        if onnx_accuracy is None:
            notes.append("outputs are not class scores: no accuracy reported")

    quantized = None
    if quantize:
        quantized = quantize_model(
            onnx_path,
            x,
            input_name=source.meta.input_name,
            output_name=output_name,
            labels=y,
            classes=source.classes,
            threads=threads,
        )
    result = TranslationResult(
        onnx_path=onnx_path,
        framework=source.framework,
        source_format=source.source_format,
        opset=_opset(onnx_path),
        output_name=output_name,
        max_abs_diff=diff,
        n_samples=len(x),
        tolerance=tolerance,
        source_accuracy=source_accuracy,
        onnx_accuracy=onnx_accuracy,
        quantized=quantized,
        seconds=round(time.perf_counter() - started, 3),
        notes=tuple(notes),
    )
    (out_dir / RESULT_NAME).write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
    return result
