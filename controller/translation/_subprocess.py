"""translate_in_subprocess(): the same translation in a throw-away worker process, with a time limit.

Loading an artifact may run its code (a pickle, a TorchScript archive), exporting may crash or hang in
native code; in a child process none of that reaches the controller. The child is started in its own
session and its whole process group is killed on timeout. This isolates crashes and hangs, not hostile
code: run the worker in a container or as an unprivileged user for that.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from controller.translation._result import TranslationResult
from controller.translation._translate import DEFAULT_OPSET, DEFAULT_TOLERANCE
from controller.translation.errors import TranslationFailed, TranslationTimeout, error_from_json

DEFAULT_TIMEOUT_S = 600.0
_STDERR_TAIL = 2000


def worker_command(
    artifact: Path,
    model_json_path: Path,
    samples_path: Path,
    out_dir: Path,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    quantize: bool = False,
    opset: int = DEFAULT_OPSET,
    threads: int = 1,
    allow_pickle: bool = False,
    python: str | None = None,
) -> list[str]:
    """The argv that runs the translation worker (for runners that start it themselves)."""
    argv = [
        python or sys.executable,
        "-m",
        "controller.translation.worker",
        "--artifact",
        str(artifact),
        "--model-json",
        str(model_json_path),
        "--samples",
        str(samples_path),
        "--out-dir",
        str(out_dir),
        "--tolerance",
        repr(float(tolerance)),
        "--opset",
        str(opset),
        "--threads",
        str(threads),
    ]
    if quantize:
        argv.append("--quantize")
    if allow_pickle:
        argv.append("--allow-pickle")
    return argv


def _kill_group(process: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def translate_in_subprocess(
    artifact: Path,
    model_json: dict[str, Any],
    samples: Any,
    *,
    labels: Any | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    quantize: bool = False,
    out_dir: Path,
    opset: int = DEFAULT_OPSET,
    threads: int = 1,
    allow_pickle: bool = False,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    python: str | None = None,
) -> TranslationResult:
    """Like ``translate``, in a fresh ``python -m controller.translation.worker`` process.

    The worker's errors are raised here as the same ``TranslationError`` subclasses; a worker that runs past
    ``timeout_s`` is killed (``TranslationTimeout``), one that dies without reporting raises
    ``TranslationFailed`` with the end of its stderr.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fedge-translate-") as tmp:
        model_json_path, samples_path = Path(tmp) / "model.json", Path(tmp) / "samples.npz"
        model_json_path.write_text(json.dumps(model_json), encoding="utf-8")
        arrays = {"x": np.asarray(samples)}
        if labels is not None:
            arrays["y"] = np.asarray(labels)
        with samples_path.open("wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]
        argv = worker_command(
            Path(artifact).resolve(),
            model_json_path,
            samples_path,
            out_dir.resolve(),
            tolerance=tolerance,
            quantize=quantize,
            opset=opset,
            threads=threads,
            allow_pickle=allow_pickle,
            python=python,
        )
        # the worker imports this very copy of the package, installed or not
        package_root = str(Path(__file__).resolve().parents[2])
        pythonpath = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p)
        process = subprocess.Popen(
            argv,
            env={**os.environ, "PYTHONPATH": pythonpath},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            stdout, stderr = process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            process.communicate()
            raise TranslationTimeout(timeout_s) from None
        finally:
            if process.poll() is None:
                _kill_group(process)
                process.wait()
    return _outcome(process.returncode, stdout, stderr)


def _outcome(returncode: int, stdout: str, stderr: str) -> TranslationResult:
    lines = [line for line in stdout.splitlines() if line.strip()]
    try:
        outcome = json.loads(lines[-1]) if lines else None
    except ValueError:
        outcome = None
    if not isinstance(outcome, dict) or "ok" not in outcome:
        tail = stderr[-_STDERR_TAIL:].strip()
        raise TranslationFailed(
            f"the translation worker exited with status {returncode} without a result"
            + (f"; its stderr ends with:\n{tail}" if tail else "")
        )
    if not outcome["ok"]:
        raise error_from_json(outcome.get("error") or {})
    return TranslationResult.from_dict(outcome["result"])
