"""Which ONNX Runtime execution providers to ask for (pure: tested with fake provider lists)."""

from __future__ import annotations

from collections.abc import Sequence

AUTO_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
CPU = "CPUExecutionProvider"


def select_providers(available: Sequence[str], preferred: Sequence[str] | None = None) -> list[str]:
    """``preferred`` (those available, in that order) or TensorRT > CUDA > CPU; CPU always last as fallback.

    Raises ValueError when nothing asked for is available and there is no CPU provider either.
    """
    order = list(preferred) if preferred else list(AUTO_ORDER)
    chosen = [p for p in order if p in available]
    if CPU in available and CPU not in chosen:
        chosen.append(CPU)
    if not chosen:
        raise ValueError(f"none of {order} is available (have: {list(available)})")
    return chosen


def available_providers() -> list[str]:
    import onnxruntime

    providers: list[str] = onnxruntime.get_available_providers()
    return providers
