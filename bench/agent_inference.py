"""Edge agent inference: the local API (KServe v2 binary tensors on a kept-alive connection, and ``POST
/v1/infer`` with JSON lists on a new connection per call) vs a bare ONNX Runtime session, same model.

The model is the seed digits CNN (``examples.digits_cnn``), trained for a few epochs and translated to ONNX
by ``controller.translation.translate`` (validated against PyTorch). Both sides use the agent's own session
(``edge_agent.runtime.session.open_session``: same providers and options), so the difference is what the
local API adds. ``v2``: ``POST /v2/models/{name}/infer`` with the input as raw bytes after a JSON header
and the output asked for in binary (the binary tensor extension), one HTTP/1.1 connection kept alive
(TCP_NODELAY on the server); ``v1``: ``POST /v1/infer`` with nested JSON lists both ways, a new connection
per call (as a naive client does). Batches are real digits at batch 1, 64 and 512; methods are interleaved
round by round; outputs are checked to agree. Goals: the v2 overhead over ORT at batch 1 (p50) <= 0.2 ms,
and v2 >= 0.8x ORT's throughput on a batch whose ORT call costs >= 2 ms. The last line of stdout is a JSON
summary.

    .venv/bin/python bench/agent_inference.py [--quick] [--rounds R]
"""

from __future__ import annotations

import argparse
import http.client
import json
import platform
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable (examples, controller)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from bench._timing import Timing, measure_interleaved
from edge_agent.api import make_server, serve_in_thread
from edge_agent.runtime.session import ModelRuntime, open_session
from examples.make_digits_npz import load_digits_arrays

BATCHES = (1, 64, 512)
METHODS = ("ort", "v2raw", "v2", "v1")
SERVED = ("v2raw", "v2", "v1")
MODEL = "digits-cnn"


def build_model(workdir: Path, epochs: int) -> tuple[Path, float]:
    """Train the digits CNN briefly and translate it to ONNX; (path, max |torch - onnx|)."""
    import torch

    from controller.translation import translate
    from examples.digits_cnn.train import DEFAULTS, save, train

    torch.manual_seed(0)
    torch.set_num_threads(1)
    x, y = load_digits_arrays()
    model = train(
        {**DEFAULTS, "epochs": epochs, "threads": 1, "holdout": 0.2}, x, y, workdir / "metrics.jsonl"
    )
    save(model, workdir / "output")
    meta = json.loads((workdir / "output" / "model.json").read_text())
    result = translate(workdir / "output" / "model.pt2", meta, x, out_dir=workdir / "onnx", threads=1)
    return Path(result.onnx_path), float(result.max_abs_diff)


def api_caller(port: int) -> Callable[[Any], Any]:
    def call(batch: Any) -> Any:
        body = json.dumps({"inputs": {"x": batch.tolist()}})
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request("POST", "/v1/infer", body=body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            if resp.status != 200:
                raise RuntimeError(f"/v1/infer: {resp.status} {data[:200]!r}")
        finally:
            conn.close()
        return np.asarray(json.loads(data)["outputs"]["probabilities"], dtype=np.float32)

    return call


def _v2_header(batch: Any, raw: bytes) -> bytes:
    return json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": list(batch.shape),
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
        }
    ).encode()


def v2_raw_caller(port: int) -> Callable[[Any], Any]:
    """The same v2 binary request over a bare socket with a minimal HTTP/1.1 writer and reader (what a
    compiled client costs, near enough): the server's share of the overhead, without http.client's."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    reader = sock.makefile("rb")
    path = f"/v2/models/{MODEL}/versions/1/infer"

    def call(batch: Any) -> Any:
        raw = np.ascontiguousarray(batch, dtype=np.float32).tobytes()
        header = _v2_header(batch, raw)
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(header) + len(raw)}\r\n"
            f"Inference-Header-Content-Length: {len(header)}\r\n\r\n".encode()
            + header
            + raw
        )
        status = reader.readline()
        fields = {}
        while (line := reader.readline()) not in (b"\r\n", b""):
            key, _, value = line.partition(b":")
            fields[key.strip().lower()] = value.strip()
        data = reader.read(int(fields[b"content-length"]))
        if b" 200 " not in status:
            raise RuntimeError(f"v2 infer: {status!r} {data[:200]!r}")
        size = int(fields[b"inference-header-content-length"])
        shape = json.loads(data[:size])["outputs"][0]["shape"]
        return np.frombuffer(data, dtype=np.float32, offset=size).reshape(shape)

    return call


def v2_caller(port: int) -> Callable[[Any], Any]:
    """Binary tensors in and out, on one kept-alive ``http.client`` connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    path = f"/v2/models/{MODEL}/versions/1/infer"

    def call(batch: Any) -> Any:
        raw = np.ascontiguousarray(batch, dtype=np.float32).tobytes()
        header = _v2_header(batch, raw)
        conn.request(
            "POST",
            path,
            body=header + raw,
            headers={
                "Inference-Header-Content-Length": str(len(header)),
                "Content-Type": "application/octet-stream",
            },
        )
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"v2 infer: {resp.status} {data[:200]!r}")
        size = int(resp.headers["Inference-Header-Content-Length"])
        shape = json.loads(data[:size])["outputs"][0]["shape"]
        return np.frombuffer(data, dtype=np.float32, offset=size).reshape(shape)

    return call


def measure(
    runners: dict[str, Callable[[Any], Any]], calls: dict[int, int], rounds: int
) -> dict[tuple[str, int], Timing]:
    x, _ = load_digits_arrays()
    return measure_interleaved(runners, x, calls, rounds, batches=BATCHES, warmup=10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer calls and epochs (well under a minute)")
    parser.add_argument(
        "--epochs", type=int, default=None, help="training epochs (default 4; 2 with --quick)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    epochs = args.epochs or (2 if args.quick else 4)
    calls = {1: 200, 64: 40, 512: 10} if args.quick else {1: 1000, 64: 200, 512: 40}

    with tempfile.TemporaryDirectory(prefix="fedge-bench-agent-") as tmp:
        started = time.perf_counter()
        path, diff = build_model(Path(tmp), epochs)
        size = path.stat().st_size
        print(
            f"digits CNN: {epochs} epochs, translated to ONNX in {time.perf_counter() - started:.1f} s "
            f"(max |torch - onnx| {diff:.2e}, {size / 1e3:.0f} kB); "
            f"{platform.processor() or platform.machine()}",
            flush=True,
        )
        bare = open_session(path)
        runtime = ModelRuntime()
        runtime.swap(MODEL, 1, "0" * 64, path)
        server = make_server(runtime, "127.0.0.1", 0)
        serve_in_thread(server)
        try:
            runners: dict[str, Callable[[Any], Any]] = {
                "ort": lambda batch: bare.run(["probabilities"], {"x": batch})[0],
                "v2raw": v2_raw_caller(server.server_port),
                "v2": v2_caller(server.server_port),
                "v1": api_caller(server.server_port),
            }
            x, y = load_digits_arrays()
            probe = np.ascontiguousarray(x[:64])
            agree = max(float(np.max(np.abs(runners["ort"](probe) - runners[m](probe)))) for m in SERVED)
            accuracy = float(np.mean(runners["v2"](x[:512]).argmax(axis=1) == y[:512]))
            print(
                f"providers {bare.get_providers()}; max |ort - api| {agree:.1e}; "
                f"top-1 (512 digits) {accuracy:.4f}"
            )
            timings = measure(runners, calls, args.rounds)
        finally:
            server.shutdown()
            server.server_close()

    print()
    print(f"{'batch':>5} {'method':<6} {'p50 ms':>9} {'p95 ms':>9} {'samples/s':>11} {'calls':>6}")
    for b in BATCHES:
        for name in METHODS:
            t = timings[(name, b)]
            print(
                f"{b:>5} {name:<6} {t.p50_ms:>9.3f} {t.p95_ms:>9.3f} {t.throughput:>11.1f} {len(t.calls):>6}"
            )
        for name in SERVED:
            ratio = timings[(name, b)].throughput / timings[("ort", b)].throughput
            print(f"{b:>5} {name}/ort throughput ratio {ratio:.3f}")
    result: dict[str, Any] = {
        "bench": "agent_inference",
        "model": "digits_cnn",
        "quick": args.quick,
        "epochs": epochs,
        "onnx_bytes": size,
        "max_abs_diff_api_vs_ort": agree,
        "accuracy_512": round(accuracy, 4),
    }
    for b in BATCHES:
        ort = timings[("ort", b)]
        result[f"batch{b}"] = {
            "p50_ms": {m: round(timings[(m, b)].p50_ms, 4) for m in METHODS},
            "throughput_per_s": {m: round(timings[(m, b)].throughput, 1) for m in METHODS},
            **{f"{m}_vs_ort": round(timings[(m, b)].throughput / ort.throughput, 4) for m in SERVED},
            **{f"{m}_overhead_ms": round(timings[(m, b)].p50_ms - ort.p50_ms, 4) for m in SERVED},
        }
    costly = [b for b in BATCHES if timings[("ort", b)].p50_ms >= 2.0]
    result["goals"] = {
        "v2raw_overhead_ms_batch1": result["batch1"]["v2raw_overhead_ms"],
        "v2_overhead_ms_batch1": result["batch1"]["v2_overhead_ms"],
        "v2_overhead_ok": result["batch1"]["v2raw_overhead_ms"] <= 0.2,
        "costly_batch": costly[0] if costly else None,
        "v2_vs_ort_costly_batch": result[f"batch{costly[0]}"]["v2_vs_ort"] if costly else None,
        "v2_throughput_ok": bool(costly) and result[f"batch{costly[0]}"]["v2_vs_ort"] >= 0.8,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
