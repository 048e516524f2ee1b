"""Hardware facts a device reports at enrollment: CPU, RAM, GPU/CUDA, ONNX Runtime providers."""

from __future__ import annotations

import os
import platform
import shutil
from typing import Any


def _ram_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def ort_providers() -> list[str]:
    """ONNX Runtime execution providers usable here (empty if onnxruntime is not installed)."""
    try:
        import onnxruntime
    except ImportError:
        return []
    providers: list[str] = onnxruntime.get_available_providers()
    return providers


def hardware_facts() -> dict[str, Any]:
    """What the controller records about a device."""
    providers = ort_providers()
    return {
        "os": platform.system(),
        "kernel": platform.release(),
        "arch": platform.machine(),
        "python": platform.python_version(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "ram_bytes": _ram_bytes(),
        "nvidia_smi": shutil.which("nvidia-smi") is not None,
        "cuda_available": "CUDAExecutionProvider" in providers,
        "tensorrt_available": "TensorrtExecutionProvider" in providers,
        "ort_providers": providers,
    }
