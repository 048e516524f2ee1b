"""Rollout latency: from ``POST /v1/deployments`` to each simulated agent serving the new model.

Starts a controller on embedded defaults (SQLite, local artifact store, in-process EVM) in a temp dir as its
own process (``python -m controller.cli serve``, so that it does not share the GIL with the agents),
enrolls N simulated agents (``simulator.fleet``: the real agent code, one thread and one state dir each,
one-thread ONNX Runtime sessions), uploads a small ONNX model (made with ``onnx.helper``) and deploys it
to all of them. For each agent the latency is the wall-clock time from just before the POST to the moment
its loop finished the apply and reported ``succeeded`` (download, SHA-256 check against the chain hash,
health check, swap, report). The poll interval bounds the latency from below (an agent notices the new
desired state at its next poll: on average half an interval), so it is part of the result.

    .venv/bin/python bench/rollout.py [--quick] [--agents N] [--poll-interval S] [--waves 0.1,1.0]

N = 100 by default, 20 with ``--quick``; ``--agents 1000`` works (enrollment takes a while; the default
poll interval grows with N: max(1 s, N / 100 s)). The last line of stdout is a JSON summary.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import numpy as np

from simulator.fleet import Fleet
from tests.fixtures.services import free_port


def small_onnx(constant: float = 1.0) -> bytes:
    """y = relu(x @ W + constant), x: float[1, 64], W: 64x64 (about 16 kB)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "w")
    c = helper.make_tensor("c", TensorProto.FLOAT, [1], [constant])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["xw"]),
        helper.make_node("Add", ["xw", "c"], ["z"]),
        helper.make_node("Relu", ["z"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "bench", [x], [y], [w, c])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


@contextlib.contextmanager
def controller(data_dir: Path, token: str) -> Iterator[str]:
    """``fedge-controller serve`` on a free loopback port; yields its URL."""
    port = free_port()
    env = {**os.environ, "FEDGE_DATA_DIR": str(data_dir), "FEDGE_ADMIN_TOKEN": token}
    log = open(data_dir / "controller.log", "ab")  # noqa: SIM115 - handed to the child process
    argv = [sys.executable, "-m", "controller.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"controller did not start; see {data_dir / 'controller.log'}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


def upload(url: str, token: str, data: bytes) -> tuple[str, int]:
    """Register a dataset and a model, store ``data`` as its ONNX version; (model_id, version)."""
    auth = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url, headers=auth, timeout=60) as http:
        ds = http.post(
            "/v1/datasets",
            files={"dataset": ("d.npz", b"bench", "application/octet-stream")},
            data={"metadata": json.dumps({"organization_id": "org-bench", "samples_dimension": "(64,)"})},
        )
        ds.raise_for_status()
        body = {
            "model_params": {"developer_id": "dev-bench", "organization_id": "org-bench"},
            "data_params": {"dataset_id": ds.json()["dataset_id"]},
        }
        model = http.post("/v1/models", json=body)
        model.raise_for_status()
        model_id = str(model.json()["model_id"])
        art = http.put(f"/v1/models/{model_id}/artifact?kind=onnx&filename=model.onnx", content=data)
        art.raise_for_status()
        return model_id, int(art.json()["version"])


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="20 agents")
    parser.add_argument(
        "--agents", type=int, default=None, help="number of agents (default 100; 20 with --quick)"
    )
    parser.add_argument("--poll-interval", type=float, default=None, help="default max(1, N/100) s")
    parser.add_argument(
        "--waves", default=None, help="cumulative fractions, e.g. 0.1,1.0 (default all at once)"
    )
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args(argv)
    n = args.agents or (20 if args.quick else 100)
    interval = args.poll_interval or max(1.0, n / 100)
    waves = [float(w) for w in args.waves.split(",")] if args.waves else None
    token = "fedge_bench_" + secrets.token_urlsafe(24)

    with tempfile.TemporaryDirectory(prefix="fedge-bench-rollout-") as tmp:
        data_dir = Path(tmp) / "controller"
        data_dir.mkdir()
        started = time.perf_counter()
        with controller(data_dir, token) as url:
            print(f"controller up in {time.perf_counter() - started:.1f} s at {url}", flush=True)
            model_id, version = upload(url, token, small_onnx())
            with Fleet(url, token, Path(tmp) / "agents", poll_interval=interval, max_backoff=10.0) as fleet:
                t0 = time.perf_counter()
                fleet.ensure(n)
                enroll_s = time.perf_counter() - t0
                print(f"enrolled {n} agents in {enroll_s:.1f} s ({n / enroll_s:.1f}/s)", flush=True)
                fleet.start()
                time.sleep(min(interval, 2.0))  # every agent has polled once (nothing deployed yet)
                posted = time.time()
                dep_id = fleet.deploy(model_id, version, waves=waves)
                dep = fleet.wait_deployment(dep_id, args.timeout, poll=0.2)
                controller_s = time.time() - posted
                fleet.wait_active(model_id, version, timeout=30)
                done = {k: v - posted for k, v in fleet.convergence(dep_id).items() if v is not None}
                errors = sum(sim.errors for sim in fleet.agents)
    lat = sorted(done.values())
    print(
        f"deployment {dep.state}: {len(lat)}/{n} agents active; latency p50 {percentile(lat, 50):.2f} s, "
        f"p95 {percentile(lat, 95):.2f} s, max {lat[-1]:.2f} s (poll interval {interval:.1f} s); "
        f"controller saw the rollout end after {controller_s:.2f} s; agent errors {errors}"
    )
    result: dict[str, Any] = {
        "bench": "rollout",
        "agents": n,
        "quick": args.quick,
        "poll_interval_s": interval,
        "strategy": {"waves": waves} if waves else "all-at-once",
        "state": dep.state,
        "converged": len(lat),
        "enroll_s": round(enroll_s, 2),
        "latency_s": {
            "p50": round(percentile(lat, 50), 3),
            "p95": round(percentile(lat, 95), 3),
            "max": round(lat[-1], 3),
        },
        "deployment_done_s": round(controller_s, 3),
        "agent_errors": errors,
    }
    print(json.dumps(result))
    return 0 if dep.state == "succeeded" and len(lat) == n else 1


if __name__ == "__main__":
    raise SystemExit(main())
