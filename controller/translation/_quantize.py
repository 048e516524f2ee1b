"""Optional int8 post-training quantization of a translated model, kept only when it pays.

Static quantization (QDQ format, per-channel int8 weights, uint8 activations) calibrated on the first
``CALIBRATION_SAMPLES`` samples with ONNX Runtime's tools. The int8 model is kept when it loses at most
``MAX_ACCURACY_LOSS_POINTS`` of top-1 accuracy and is not slower at batch 1 than the fp32 model (within
``LATENCY_NOISE`` of measurement noise), both measured on the same samples with the same thread count.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from controller.translation._result import QuantizedResult
from controller.translation._sources import _quietly

CALIBRATION_SAMPLES = 256
CALIBRATION_BATCH = 32
MAX_ACCURACY_LOSS_POINTS = 1.0
LATENCY_NOISE = 0.05
LATENCY_SAMPLES = 200
LATENCY_ROUNDS = 3
_QUANTIZABLE_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm"}
METHOD = "static int8 (QDQ, per-channel int8 weights, uint8 activations, min-max calibration)"
_QUANTIZED_OPS = {
    "QuantizeLinear",
    "DynamicQuantizeLinear",
    "QLinearConv",
    "QLinearMatMul",
    "ConvInteger",
    "MatMulInteger",
}


def make_session(path: Path, threads: int) -> Any:
    """An ONNX Runtime CPU session with ``threads`` intra-op threads and quiet logging."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_session(session: Any, input_name: str, output_name: str, x: NDArray[Any]) -> NDArray[Any]:
    """The named output on all of ``x``, in batches of 256."""
    parts: list[NDArray[Any]] = [
        session.run([output_name], {input_name: x[i : i + 256]})[0] for i in range(0, len(x), 256)
    ]
    return np.concatenate(parts, axis=0)


def _p50_latencies_ms(sessions: list[Any], input_name: str, output_name: str, x: NDArray[Any]) -> list[float]:
    """Median batch-1 latency of each session, runs interleaved so that machine noise hits all alike."""
    samples = x[: min(len(x), LATENCY_SAMPLES)]
    times: list[list[float]] = [[] for _ in sessions]
    for session in sessions:  # warm up
        for i in range(min(10, len(samples))):
            session.run([output_name], {input_name: samples[i : i + 1]})
    for round_ in range(LATENCY_ROUNDS):
        order = list(range(len(sessions)))
        if round_ % 2:
            order.reverse()
        for i in range(len(samples)):
            feed = {input_name: samples[i : i + 1]}
            for k in order:
                started = time.perf_counter()
                sessions[k].run([output_name], feed)
                times[k].append(time.perf_counter() - started)
    return [statistics.median(t) * 1000 for t in times]


def top1(outputs: NDArray[Any], classes: tuple[Any, ...] | None) -> NDArray[Any]:
    """Predicted class of each row of class scores (its label from ``classes`` when given)."""
    index: NDArray[Any] = outputs.argmax(axis=1)
    if classes is None:
        return index
    labels: NDArray[Any] = np.asarray(classes, dtype=object)
    return np.take(labels, index)


def _calibration_reader(input_name: str, x: NDArray[Any]) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            calibration = x[: min(len(x), CALIBRATION_SAMPLES)]
            self._batches: Iterator[dict[str, NDArray[Any]]] = iter(
                [
                    {input_name: calibration[i : i + CALIBRATION_BATCH]}
                    for i in range(0, len(calibration), CALIBRATION_BATCH)
                ]
            )

        def get_next(self) -> dict[str, NDArray[Any]] | None:
            return next(self._batches, None)

    return Reader()


def quantize_int8(fp32_path: Path, int8_path: Path, x: NDArray[Any], *, input_name: str) -> Path:
    """Write the static int8 variant of ``fp32_path`` (see ``METHOD``), calibrated on the start of ``x``."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # it advises pre-processing on the root logger; we measure instead
    try:
        _quietly(
            lambda: quantize_static(
                str(fp32_path),
                str(int8_path),
                _calibration_reader(input_name, x),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                calibrate_method=CalibrationMethod.MinMax,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
            )
        )
    finally:
        logging.disable(previous)
    return int8_path


def quantize_model(
    fp32_path: Path,
    x: NDArray[Any],
    *,
    input_name: str,
    output_name: str,
    labels: NDArray[Any] | None,
    classes: tuple[Any, ...] | None,
    threads: int,
) -> QuantizedResult:
    """Quantize ``fp32_path`` to ``<stem>.int8.onnx`` beside it, measure, and keep it or delete it."""
    int8_path = fp32_path.with_name(f"{fp32_path.stem}.int8.onnx")
    fp32_size = fp32_path.stat().st_size

    def dropped(reason: str, **measured: Any) -> QuantizedResult:
        int8_path.unlink(missing_ok=True)
        values: dict[str, Any] = {
            "fp32_accuracy": None,
            "accuracy": None,
            "accuracy_loss_points": None,
            "fp32_latency_ms": None,
            "int8_latency_ms": None,
            "int8_size_bytes": None,
        }
        values.update(measured)
        return QuantizedResult(
            path=None,
            method=METHOD,
            reference="labels" if labels is not None else "fp32_predictions",
            fp32_size_bytes=fp32_size,
            kept=False,
            reason=reason,
            **values,
        )

    import onnx

    fp32_ops = {
        node.op_type for node in onnx.load(str(fp32_path)).graph.node if node.domain in ("", "ai.onnx")
    }
    if not fp32_ops & _QUANTIZABLE_OPS:
        return dropped(
            "nothing to quantize: the graph has no Conv, MatMul or Gemm operator "
            f"(its standard operators: {sorted(fp32_ops) or 'none'})"
        )
    try:
        quantize_int8(fp32_path, int8_path, x, input_name=input_name)
    except Exception as exc:
        return dropped(f"quantization failed: {type(exc).__name__}: {exc}")
    ops = {node.op_type for node in onnx.load(str(int8_path)).graph.node}
    if not ops & _QUANTIZED_OPS:
        return dropped("nothing was quantized: no operator in the graph has an int8 implementation")
    try:
        fp32, int8 = make_session(fp32_path, threads), make_session(int8_path, threads)
        fp32_top1 = top1(run_session(fp32, input_name, output_name, x), classes)
        int8_top1 = top1(run_session(int8, input_name, output_name, x), classes)
        fp32_ms, int8_ms = _p50_latencies_ms([fp32, int8], input_name, output_name, x)
    except Exception as exc:
        return dropped(f"the int8 model does not run: {type(exc).__name__}: {exc}")
    reference = labels if labels is not None else fp32_top1
    fp32_accuracy = float(np.mean(fp32_top1 == reference))
    accuracy = float(np.mean(int8_top1 == reference))
    loss_points = round((fp32_accuracy - accuracy) * 100, 4)
    measured: dict[str, Any] = {
        "fp32_accuracy": fp32_accuracy,
        "accuracy": accuracy,
        "accuracy_loss_points": loss_points,
        "fp32_latency_ms": round(fp32_ms, 5),
        "int8_latency_ms": round(int8_ms, 5),
        "int8_size_bytes": int8_path.stat().st_size,
    }
    speed = f"batch-1 p50 {int8_ms:.4f} ms int8 vs {fp32_ms:.4f} ms fp32"
    if loss_points > MAX_ACCURACY_LOSS_POINTS:
        return dropped(
            f"accuracy loss {loss_points:.2f} points > {MAX_ACCURACY_LOSS_POINTS:g} ({speed})", **measured
        )
    if int8_ms > fp32_ms * (1 + LATENCY_NOISE):
        return dropped(f"int8 is slower: {speed}", **measured)
    return QuantizedResult(
        path=int8_path,
        method=METHOD,
        reference="labels" if labels is not None else "fp32_predictions",
        fp32_size_bytes=fp32_size,
        kept=True,
        reason=f"kept: accuracy loss {loss_points:.2f} points (<= {MAX_ACCURACY_LOSS_POINTS:g}), {speed}",
        **measured,
    )
