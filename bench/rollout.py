"""Rollout latency: from ``POST /v1/deployments`` to each simulated agent serving the new model.

Starts a controller on embedded defaults (SQLite, local artifact store, in-process EVM) in a temp dir as its
own process (``python -m controller.cli serve``, so that it does not share the GIL with the agents),
enrolls N simulated agents (``simulator.fleet``: the real agent code, one thread and one state dir each,
one-thread ONNX Runtime sessions), uploads a small ONNX model (made with ``onnx.helper``) and deploys it
to all of them. For each agent the latency is the wall-clock time from just before the POST to the moment
its loop finished the apply and reported ``succeeded`` (download, SHA-256 check against the chain hash,
health check, swap, report). The poll interval bounds the latency from below (an agent notices the new
desired state at its next poll: on average half an interval), so it is part of the result.

Then the agents stop and one of them (its model deployed) is probed alone: K sequential desired-state polls
on one keep-alive connection with its current ETag (answered 304), then K without (200, a signed
document). For each: client latency p50/p95 and the controller process's CPU time per poll (from
``/proc/PID/stat``, so the client's own work is not counted). The probe only uses the HTTP API, so the same
file measures older controllers too.

    .venv/bin/python bench/rollout.py [--quick] [--agents N] [--poll-interval S] [--waves 0.1,1.0]
                                      [--probe-polls K]

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

from edge_agent.identity import DeviceIdentity
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
def controller(data_dir: Path, token: str) -> Iterator[tuple[str, int]]:
    """``fedge-controller serve`` on a free loopback port; yields (its URL, its process id)."""
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
        yield url, proc.pid
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


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def probe_polls(url: str, pid: int, identity: DeviceIdentity, count: int) -> dict[str, Any]:
    """``count`` sequential desired-state polls of one device, first with its current ETag (304 expected),
    then without (200): client latency and controller CPU per poll, in ms."""
    path = f"/v1/devices/{identity.device_id}/desired-state"
    auth = {"Authorization": f"Bearer {identity.sign_jwt(300)}"}
    out: dict[str, Any] = {"polls": count}
    with httpx.Client(base_url=url, headers=auth, timeout=30) as http:
        first = http.get(path)
        first.raise_for_status()
        etag = first.headers["etag"]
        for name, headers, status in (("304", {"If-None-Match": etag}, 304), ("200", {}, 200)):
            for _ in range(min(50, count)):  # warm up: connection, caches, allocator
                http.get(path, headers=headers)
            took: list[float] = []
            cpu0 = cpu_seconds(pid)
            for _ in range(count):
                t = time.perf_counter()
                r = http.get(path, headers=headers)
                took.append(time.perf_counter() - t)
                if r.status_code != status:
                    raise SystemExit(f"probe poll got {r.status_code}, expected {status}: {r.text[:200]}")
            cpu = cpu_seconds(pid) - cpu0
            out[f"poll_{name}"] = {
                "p50_ms": round(percentile(took, 50) * 1000, 3),
                "p95_ms": round(percentile(took, 95) * 1000, 3),
                "server_cpu_ms": round(cpu / count * 1000, 3),
            }
    return out


def start_profilers(out: Path | None, pids: dict[str, int]) -> list[subprocess.Popen[bytes]]:
    """``py-spy record`` (all threads, raw folded stacks) of each process until stopped."""
    if out is None:
        return []
    import shutil

    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out.mkdir(parents=True, exist_ok=True)
    argv = [spy, "record", "--rate", "200", "--format", "raw", "--threads", "--idle", "--nonblocking"]
    return [
        subprocess.Popen(
            [*argv, "--pid", str(pid), "--output", str(out / f"{name}.txt")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name, pid in pids.items()
    ]


def stop_profilers(spies: list[subprocess.Popen[bytes]]) -> None:
    import signal

    for spy in spies:
        spy.send_signal(signal.SIGINT)
    for spy in spies:
        spy.wait(30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="20 agents")
    parser.add_argument(
        "--agents", type=int, default=None, help="number of agents (default 100; 20 with --quick)"
    )
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=None,
        help="default 10 s with MQTT push (the agent's default), max(1, N/100) s with --no-mqtt",
    )
    parser.add_argument(
        "--no-mqtt",
        dest="mqtt",
        action="store_false",
        help="agents only poll over HTTP (default: MQTT push + reports over MQTT, polls as the fallback)",
    )
    parser.add_argument(
        "--waves", default=None, help="cumulative fractions, e.g. 0.1,1.0 (default all at once)"
    )
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="record py-spy profiles (controller, bench process) of the rollout window into this dir",
    )
    parser.add_argument(
        "--probe-polls", type=int, default=None, help="polls per probe (default 1000; 200 quick)"
    )
    args = parser.parse_args(argv)
    n = args.agents or (20 if args.quick else 100)
    interval = args.poll_interval or (10.0 if args.mqtt else max(1.0, n / 100))
    waves = [float(w) for w in args.waves.split(",")] if args.waves else None
    probes = args.probe_polls or (200 if args.quick else 1000)
    token = "fedge_bench_" + secrets.token_urlsafe(24)

    with tempfile.TemporaryDirectory(prefix="fedge-bench-rollout-") as tmp:
        data_dir = Path(tmp) / "controller"
        data_dir.mkdir()
        started = time.perf_counter()
        with controller(data_dir, token) as (url, pid):
            print(f"controller up in {time.perf_counter() - started:.1f} s at {url}", flush=True)
            model_id, version = upload(url, token, small_onnx())
            agents_dir = Path(tmp) / "agents"
            with Fleet(
                url, token, agents_dir, poll_interval=interval, max_backoff=10.0, mqtt=args.mqtt
            ) as fleet:
                t0 = time.perf_counter()
                fleet.ensure(n)
                enroll_s = time.perf_counter() - t0
                print(f"enrolled {n} agents in {enroll_s:.1f} s ({n / enroll_s:.1f}/s)", flush=True)
                fleet.start()
                fleet.wait_connected(timeout=120)
                time.sleep(2.0)  # every agent has polled once (nothing deployed yet)
                spies = start_profilers(args.profile, {"controller": pid, "bench": os.getpid()})
                cpu0 = cpu_seconds(pid), cpu_seconds(os.getpid())
                posted = time.time()
                dep_id = fleet.deploy(model_id, version, waves=waves)
                dep = fleet.wait_deployment(dep_id, args.timeout, poll=0.2)
                controller_s = time.time() - posted
                fleet.wait_active(model_id, version, timeout=30)
                window = time.time() - posted
                cpu = cpu_seconds(pid) - cpu0[0], cpu_seconds(os.getpid()) - cpu0[1]
                stop_profilers(spies)
                done = {k: v - posted for k, v in fleet.convergence(dep_id).items() if v is not None}
                errors = sum(sim.errors for sim in fleet.agents)
                fleet.stop()  # the probe polls alone
                probe = probe_polls(url, pid, fleet.agents[0].identity, probes)
    lat = sorted(done.values())
    print(
        f"deployment {dep.state}: {len(lat)}/{n} agents active; latency p50 {percentile(lat, 50):.2f} s, "
        f"p95 {percentile(lat, 95):.2f} s, max {lat[-1]:.2f} s (poll interval {interval:.1f} s); "
        f"controller saw the rollout end after {controller_s:.2f} s; agent errors {errors}"
    )
    for name in ("304", "200"):
        p = probe[f"poll_{name}"]
        print(
            f"one device polling alone ({probe['polls']} polls): {name} p50 {p['p50_ms']:.2f} ms, "
            f"p95 {p['p95_ms']:.2f} ms, controller CPU {p['server_cpu_ms']:.2f} ms/poll"
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
        "rollout_cpu": {  # cores busy between the POST and the last agent active
            "controller": round(cpu[0] / window, 2),
            "agents": round(cpu[1] / window, 2),
        },
        "probe": probe,
    }
    print(json.dumps(result))
    return 0 if dep.state == "succeeded" and len(lat) == n else 1


if __name__ == "__main__":
    raise SystemExit(main())
