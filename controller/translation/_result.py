"""What a translation produced, as plain data that round-trips through JSON (the worker's output line)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class QuantizedResult:
    """The int8 variant of a translated model, measured against the fp32 ONNX model on the same samples.

    ``accuracy`` is top-1 agreement with the labels when they were given (``reference == "labels"``), else
    with the fp32 model's own predictions (``"fp32_predictions"``). Latencies are medians of batch-1 runs
    over the same samples, interleaved, with the same ONNX Runtime thread count. ``path`` is None when the
    variant was not kept (the file is deleted); ``reason`` says why it was kept or dropped. Measurements
    are None when quantization failed before they could be taken.
    """

    path: Path | None
    method: str
    reference: str
    fp32_accuracy: float | None
    accuracy: float | None
    accuracy_loss_points: float | None
    fp32_latency_ms: float | None
    int8_latency_ms: float | None
    fp32_size_bytes: int
    int8_size_bytes: int | None
    kept: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path) if self.path is not None else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantizedResult:
        values = dict(data)
        values["path"] = Path(values["path"]) if values.get("path") else None
        return cls(**values)


@dataclass(frozen=True)
class TranslationResult:
    """A validated ONNX model: where it is and how closely it matches its source.

    ``max_abs_diff`` is the largest absolute difference between the source model's outputs (class
    probabilities, or raw outputs) and ONNX Runtime's on ``n_samples`` samples; None only for an ONNX
    source that the ONNX reference evaluator could not run (then nothing was compared: see ``notes``).
    Accuracies are top-1 on the labels, None when no labels were given.
    """

    onnx_path: Path
    framework: str
    source_format: str
    opset: int
    output_name: str
    max_abs_diff: float | None
    n_samples: int
    tolerance: float
    source_accuracy: float | None = None
    onnx_accuracy: float | None = None
    quantized: QuantizedResult | None = None
    seconds: float = 0.0
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["onnx_path"] = str(self.onnx_path)
        data["quantized"] = self.quantized.to_dict() if self.quantized is not None else None
        data["notes"] = list(self.notes)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TranslationResult:
        values = dict(data)
        values["onnx_path"] = Path(values["onnx_path"])
        quantized = values.get("quantized")
        values["quantized"] = QuantizedResult.from_dict(quantized) if quantized else None
        values["notes"] = tuple(values.get("notes", ()))
        return cls(**values)
