"""Translate a registered trained version to a validated ONNX version of the same model (and optionally an
int8 variant): the work behind ``POST /v1/models/{id}/translate``, also run by a drift policy's retrain
(:mod:`controller.fleet.drift_policy`). Artifacts are read through the chain-verified path; the result is
stored, hashed and recorded on chain, linked to its source version."""

from __future__ import annotations

import io
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from controller.config import ControllerSettings
from controller.db.models import ModelVersion
from controller.errors import ProblemError, ServiceUnavailable, Unprocessable
from controller.registry.service import Registry
from controller.schemas.translation import QuantizedOut, TranslateRequest, TranslateResult

_ARTIFACT_NAME = {"pytorch": "model.pt2", "sklearn": "model.skops", "onnx": "model.onnx"}


def _samples(registry: Registry, dataset_id: str, n: int, tmp: Path) -> tuple[Any, Any]:
    """The last ``n`` samples of the model's dataset (a .npz with 'x' and optional 'y'), chain-checked."""
    ds = registry.get_dataset(dataset_id)
    chain_sha, _ = registry.chain_dataset_hash(ds)
    data = b"".join(registry.verified_chunks(ds.bucket, ds.object_key, chain_sha, f"dataset {ds.id}"))
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            x = npz["x"]
            y = npz["y"] if "y" in npz.files else None
    except (ValueError, KeyError, OSError) as exc:
        raise Unprocessable(
            f"translation validates on held-out samples of dataset {ds.id}, which must be a .npz with an "
            f"array 'x' (and optionally 'y'): {exc}",
            field="dataset",
        ) from exc
    take = min(n, len(x))
    return x[-take:], (y[-take:] if y is not None else None)


def translate_version(
    registry: Registry, settings: ControllerSettings, model_id: str, req: TranslateRequest, created_by: str
) -> TranslateResult:
    """Translate a trained version to ONNX, run source and ONNX Runtime side by side on held-out samples
    and refuse (422) if the largest output difference exceeds the tolerance."""
    from controller.translation import (
        SUPPORTED_FRAMEWORKS,
        TranslationError,
        TranslationRejected,
        UnsupportedFramework,
        translate_in_subprocess,
    )

    source = registry.resolve_version(model_id, req.source_version, None if req.source_version else "trained")
    if source.kind != "trained":
        raise Unprocessable(f"version {source.version} is a {source.kind} artifact; translate a trained one",
                            field="source_version")  # fmt: skip
    descriptor: dict[str, Any] = dict(source.descriptor or {})
    framework = str(descriptor.get("framework") or source.format or "")
    if framework not in SUPPORTED_FRAMEWORKS:
        raise Unprocessable(
            f"cannot translate framework {framework or 'unknown'!r}; "
            f"supported: {', '.join(SUPPORTED_FRAMEWORKS)}",
            field="framework",
            supported=list(SUPPORTED_FRAMEWORKS),
        )
    descriptor["framework"] = framework
    model = registry.get_model(model_id)
    with tempfile.TemporaryDirectory(prefix="fedge-translate-") as tmp_name:
        tmp = Path(tmp_name)
        artifact = tmp / _artifact_name(source, framework)
        chain_sha, _ = registry.chain_version_hash(source)
        with open(artifact, "wb") as fh:
            for chunk in registry.verified_chunks(
                source.bucket, source.object_key, chain_sha, f"model {model_id} v{source.version}"
            ):
                fh.write(chunk)
        x, y = _samples(registry, model.dataset_id, req.samples, tmp)
        try:
            result = translate_in_subprocess(
                artifact,
                descriptor,
                x,
                labels=y,
                tolerance=req.tolerance,
                quantize=req.quantize,
                out_dir=tmp / "out",
                timeout_s=settings.translation_timeout_seconds,
            )
        except TranslationRejected as exc:
            raise Unprocessable(
                f"translation refused: {exc}",
                field="tolerance",
                max_abs_diff=exc.max_abs_diff if math.isfinite(exc.max_abs_diff) else str(exc.max_abs_diff),
                tolerance=exc.tolerance,
            ) from exc
        except UnsupportedFramework as exc:
            raise Unprocessable(str(exc), field="framework", supported=list(SUPPORTED_FRAMEWORKS)) from exc
        except TranslationError as exc:
            raise Unprocessable(f"translation failed: {exc}", field="artifact") from exc
        onnx_descriptor = {
            "framework": "onnx",
            "input_name": descriptor.get("input_name"),
            "input_shape": descriptor.get("input_shape"),
            "input_dtype": descriptor.get("input_dtype"),
            "output_name": result.output_name,
            "opset": result.opset,
            "source_framework": framework,
            "max_abs_diff": result.max_abs_diff,
            "n_samples": result.n_samples,
            "onnx_accuracy": result.onnx_accuracy,
        }
        try:
            onnx_v = registry.add_version_from_file(
                model_id, "onnx", result.onnx_path, created_by=created_by, fmt="onnx",
                source_version=source.version, descriptor=onnx_descriptor,
            )  # fmt: skip
            quantized = None
            q = result.quantized
            if q is not None:
                quantized = QuantizedOut(
                    kept=q.kept,
                    reason=q.reason,
                    accuracy=q.accuracy,
                    accuracy_loss_points=q.accuracy_loss_points,
                    fp32_latency_ms=q.fp32_latency_ms,
                    int8_latency_ms=q.int8_latency_ms,
                )
                if q.kept and q.path is not None:
                    q_v = registry.add_version_from_file(
                        model_id,
                        "quantized",
                        q.path,
                        created_by=created_by,
                        fmt="onnx",
                        source_version=onnx_v.version,
                        descriptor={**onnx_descriptor, "quantization": q.method},
                    )
                    quantized.version, quantized.sha256 = q_v.version, q_v.sha256
        except ProblemError:
            raise
        except OSError as exc:
            raise ServiceUnavailable(f"could not store the translation: {exc}", backend="storage") from exc
    assert onnx_v.sha256
    return TranslateResult(
        model_id=model_id,
        version=onnx_v.version,
        sha256=onnx_v.sha256,
        source_version=source.version,
        framework=framework,
        opset=result.opset,
        max_abs_diff=result.max_abs_diff,
        tolerance=result.tolerance,
        n_samples=result.n_samples,
        source_accuracy=result.source_accuracy,
        onnx_accuracy=result.onnx_accuracy,
        quantized=quantized,
    )


def _artifact_name(mv: ModelVersion, framework: str) -> str:
    from controller.training.manager import ARTIFACT_NAMES

    if mv.filename in ARTIFACT_NAMES:
        return mv.filename
    return _ARTIFACT_NAME.get(framework, "model.bin")
