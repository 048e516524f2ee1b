"""Translation to ONNX: ``POST /v1/models/{id}/translate``."""

from __future__ import annotations

from pydantic import BaseModel, Field


class TranslateRequest(BaseModel):
    source_version: int | None = Field(default=None, ge=1, description="trained version (default: newest)")
    quantize: bool = Field(
        default=False, description="also build an int8 variant, kept if accurate and faster"
    )
    tolerance: float = Field(default=1e-4, gt=0, le=1, description="largest allowed |source - onnx| output")
    samples: int = Field(default=1000, ge=10, le=100_000, description="held-out samples to compare on")


class QuantizedOut(BaseModel):
    kept: bool
    reason: str
    version: int | None = None
    sha256: str | None = None
    accuracy: float | None = None
    accuracy_loss_points: float | None = None
    fp32_latency_ms: float | None = None
    int8_latency_ms: float | None = None


class TranslateResult(BaseModel):
    model_id: str
    version: int
    sha256: str
    source_version: int
    framework: str
    opset: int
    max_abs_diff: float | None
    tolerance: float
    n_samples: int
    source_accuracy: float | None
    onnx_accuracy: float | None
    quantized: QuantizedOut | None
