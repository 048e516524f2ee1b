"""Inference speed of the seed CNN: ONNX Runtime vs torch eager, int8 vs fp32, side by side in one run.

The network is ``examples.digits_cnn.train.DigitsNetwork`` (the seed's Listing 1 adapted to 8x8 digits),
trained for a few epochs on scikit-learn's digits, exported with ``torch.export``, translated to ONNX by
``controller.translation.translate`` (validated against the source) and quantized to static int8 with
``controller.translation.quantize_int8`` (QDQ, calibrated on 256 digits). Each engine runs on real digits
at batch 1 and batch 64:

- torch eager: the trained ``nn.Module`` under ``torch.inference_mode()``;
- ORT fp32 / ORT int8: ONNX Runtime CPU sessions.

**Threads are equal**: ``torch.set_num_threads(n)`` and ORT ``intra_op_num_threads = n`` (inter-op 1),
``n = --threads`` (default 1, the fair setting on a small shared machine). Methods are interleaved
round by round so that machine noise hits all of them alike; p50 is the median time of one call, throughput
is samples per second over all timed calls. Top-1 accuracy of each engine is on the 1,797 digits (most
of which the network trained on: it shows agreement, not generalization). The last line of stdout is a
JSON summary.

    .venv/bin/python bench/inference.py [--quick] [--threads N] [--epochs E]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable (examples, controller)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from bench._timing import Timing, measure_interleaved
from controller.translation import make_session, quantize_int8, translate
from examples.digits_cnn.train import DEFAULTS, save, train
from examples.make_digits_npz import load_digits_arrays

ENGINES = ("torch", "ort_fp32", "ort_int8")
BATCHES = (1, 64)


def build_engines(workdir: Path, epochs: int, threads: int) -> tuple[dict[str, Callable[[Any], Any]], Any]:
    """Train, export, translate and quantize; return a runner per engine and a translation summary."""
    x, y = load_digits_arrays()
    hp = {**DEFAULTS, "epochs": epochs, "threads": threads, "holdout": 0.2}
    model = train(hp, x, y, workdir / "metrics.jsonl")
    model.eval()
    save(model, workdir / "output")
    model_json = json.loads((workdir / "output" / "model.json").read_text())
    result = translate(
        workdir / "output" / "model.pt2", model_json, x, out_dir=workdir / "onnx", threads=threads
    )
    int8_path = quantize_int8(result.onnx_path, workdir / "onnx" / "model.int8.onnx", x, input_name="x")
    sessions = {
        "ort_fp32": make_session(result.onnx_path, threads),
        "ort_int8": make_session(int8_path, threads),
    }

    def torch_runner(batch: Any) -> Any:
        with torch.inference_mode():
            return model(torch.from_numpy(batch)).numpy()

    def ort_runner(session: Any) -> Callable[[Any], Any]:
        return lambda batch: session.run(["probabilities"], {"x": batch})[0]

    engines = {"torch": torch_runner, **{name: ort_runner(s) for name, s in sessions.items()}}
    accuracy = {name: float(np.mean(run(x).argmax(axis=1) == y)) for name, run in engines.items()}
    summary = {
        "max_abs_diff": result.max_abs_diff,
        "opset": result.opset,
        "fp32_bytes": result.onnx_path.stat().st_size,
        "int8_bytes": int8_path.stat().st_size,
        "accuracy": accuracy,
        "holdout_accuracy": json.loads((workdir / "metrics.jsonl").read_text().splitlines()[-1])[
            "holdout_accuracy"
        ],
    }
    return engines, summary


def measure(
    engines: dict[str, Callable[[Any], Any]], calls: dict[int, int], rounds: int
) -> dict[tuple[str, int], Timing]:
    """Time each engine at each batch size, interleaved: every round runs each engine on the same batches."""
    x, _ = load_digits_arrays()
    return measure_interleaved(engines, x, calls, rounds, batches=BATCHES, warmup=20)


def print_table(timings: dict[tuple[str, int], Timing]) -> None:
    header = (
        f"{'batch':>5}  {'torch p50 ms':>12} {'ORT fp32 p50':>12} {'ORT int8 p50':>12}  "
        f"{'torch /s':>10} {'fp32 /s':>10} {'int8 /s':>10}  "
        f"{'ORT/torch':>9} {'int8/fp32':>9} {'int8/torch':>10}"
    )
    print(header)
    print("-" * len(header))
    for b in BATCHES:
        t, f, q = (timings[(name, b)] for name in ENGINES)
        print(
            f"{b:>5}  {t.p50_ms:>12.4f} {f.p50_ms:>12.4f} {q.p50_ms:>12.4f}  "
            f"{t.throughput:>10.0f} {f.throughput:>10.0f} {q.throughput:>10.0f}  "
            f"{f.throughput / t.throughput:>8.2f}x {q.throughput / f.throughput:>8.2f}x "
            f"{q.throughput / t.throughput:>9.2f}x"
        )
    print("ratios are throughput ratios (higher = the first engine is faster)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer calls and epochs (under a minute)")
    parser.add_argument(
        "--threads", type=int, default=1, help="intra-op threads for torch AND ORT (default 1)"
    )
    parser.add_argument(
        "--epochs", type=int, default=None, help="training epochs (default 4; 2 with --quick)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    epochs = args.epochs or (4 if args.quick else 8)
    calls = {1: 300, 64: 40} if args.quick else {1: 2000, 64: 200}

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(
        f"seed CNN (examples/digits_cnn), {epochs} epochs; threads: torch.set_num_threads({args.threads}) "
        f"and ORT intra_op_num_threads={args.threads}; torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="fedge-bench-inference-") as tmp:
        started = time.perf_counter()
        engines, summary = build_engines(Path(tmp), epochs, args.threads)
        print(
            f"trained + exported + translated + quantized in {time.perf_counter() - started:.1f} s; "
            f"ONNX max abs diff {summary['max_abs_diff']:.2e} (opset {summary['opset']}); "
            f"size fp32 {summary['fp32_bytes'] / 1e6:.2f} MB, int8 {summary['int8_bytes'] / 1e6:.2f} MB; "
            f"top-1 on all digits: "
            + ", ".join(f"{name} {acc:.4f}" for name, acc in summary["accuracy"].items())
            + f" (holdout {summary['holdout_accuracy']:.4f})",
            flush=True,
        )
        timings = measure(engines, calls, args.rounds)
    print()
    print_table(timings)
    result: dict[str, Any] = {
        "bench": "inference",
        "model": "digits_cnn",
        "threads": args.threads,
        "quick": args.quick,
        "epochs": epochs,
        "max_abs_diff": summary["max_abs_diff"],
        "accuracy": {k: round(v, 4) for k, v in summary["accuracy"].items()},
        "size_bytes": {"fp32": summary["fp32_bytes"], "int8": summary["int8_bytes"]},
    }
    for b in BATCHES:
        t, f, q = (timings[(name, b)] for name in ENGINES)
        result[f"batch{b}"] = {
            "p50_ms": {name: round(timings[(name, b)].p50_ms, 5) for name in ENGINES},
            "throughput_per_s": {name: round(timings[(name, b)].throughput, 1) for name in ENGINES},
            "ort_vs_torch": round(f.throughput / t.throughput, 3),
            "int8_vs_fp32": round(q.throughput / f.throughput, 3),
        }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
