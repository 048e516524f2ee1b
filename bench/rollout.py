"""Rollout latency: from ``POST /v1/deployments`` to each simulated agent serving the new model.

Starts a controller on embedded defaults (SQLite, local artifact store, in-process EVM, embedded MQTT
broker) in a temp dir as its own process (``python -m controller.cli serve``), and N simulated agents in
worker processes of their own (``python -m simulator.fleet --stream``, one per 100 agents: the real agent
code, ``Agent.run`` in one thread per agent with its state dir, outbox and MQTT link, one-thread ONNX Runtime
sessions). It uploads a small ONNX model (made with ``onnx.helper``) and deploys it to all of them. For
each agent the latency is the wall-clock time from just before the POST to the moment its loop finished the
apply and reported ``succeeded`` (download, SHA-256 check against the chain hash, health check, swap,
report). By default the agents run as ``fedge-agent run`` does with a broker: the pushed desired state
(QoS 1, retained) starts the apply at once, status reports go over MQTT through the outbox, and the HTTP
poll (10 s, the agent's default) is the fallback. With ``--no-mqtt`` they only poll over HTTP (default
interval max(1 s, N / 100 s)), which bounds the latency from below (on average half an interval).

Printed too: CPU cores used by the controller and by the agents' processes during the rollout, and the peak
RSS of each. Then the agents stop and one of them (its model deployed) is probed alone: K sequential
desired-state polls on one keep-alive connection with its current ETag (answered 304), then K without
(200, a signed document). For each: client latency p50/p95 and the controller process's CPU time per poll
(from ``/proc/PID/stat``, so the client's own work is not counted).

    .venv/bin/python bench/rollout.py [--quick] [--agents N] [--no-mqtt] [--poll-interval S]
                                      [--waves 0.1,1.0] [--procs P] [--probe-polls K] [--profile DIR]

N = 100 by default, 20 with ``--quick``. ``--profile DIR`` records py-spy profiles (raw folded stacks,
all threads) of the controller and of the first agent process during the rollout window. The last line of
stdout is a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import numpy as np

from bench._services import controller_process, process_cpu_seconds, start_profilers, stop_profilers
from controller.client import FedgeClient
from edge_agent.identity import DeviceIdentity


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


cpu_seconds = process_cpu_seconds


def peak_rss_mb(pid: int) -> float:
    """A process's peak resident set size so far (``VmHWM``, Linux ``/proc``), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


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


class FleetProcesses:
    """The simulated agents spread over ``procs`` worker processes (``python -m simulator.fleet
    --stream``: each enrolls its share, runs the agents and prints their outcomes as they happen), so that
    1,000 agents are not 2,000 threads behind one GIL. At most ~100 agents a process: an agent holds ~7
    file descriptors (outbox, slots, HTTP and MQTT sockets) and paho's network loop uses ``select()``,
    which takes none numbered 1,024 or more (with 250 a process, 183 of each 250 never connected)."""

    def __init__(
        self, url: str, token: str, root: Path, n: int, procs: int, interval: float, mqtt: bool
    ) -> None:
        sizes = [n // procs + (1 if i < n % procs else 0) for i in range(procs)]
        self.ready: list[dict[str, Any]] = []
        self.outcomes: list[dict[str, Any]] = []
        self.stopped: list[dict[str, Any]] = []
        self._lock = threading.Condition()
        self.log = root / "agents.log"
        root.mkdir(parents=True, exist_ok=True)
        log = open(self.log, "ab")  # noqa: SIM115 - shared by the children, closed in stop()
        self._logfile = log
        env = {**os.environ, "FEDGE_TOKEN": token}
        self.procs: list[subprocess.Popen[bytes]] = []
        self._readers: list[threading.Thread] = []
        for i, size in enumerate(sizes):
            argv = [sys.executable, "-m", "simulator.fleet", "--controller", url, "--agents", str(size),
                    "--state-root", str(root / f"p{i}"), "--poll-interval", str(interval),
                    "--label", f"bench-shard={i}", "--ramp", str(size / 25), "--enroll-workers", "2",
                    "--stream", *(["--mqtt"] if mqtt else [])]  # fmt: skip
            proc = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log)
            self.procs.append(proc)
            reader = threading.Thread(target=self._read, args=(proc,), daemon=True)
            reader.start()
            self._readers.append(reader)

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            try:
                event = json.loads(raw)
            except ValueError:
                continue
            with self._lock:
                {"ready": self.ready, "outcome": self.outcomes, "stopped": self.stopped}.get(
                    event.get("event"), []
                ).append(event)
                self._lock.notify_all()

    def wait_ready(self, timeout: float) -> list[str]:
        """Every worker's device ids once all are ready (enrolled, running, connected)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self.ready) < len(self.procs):
                if any(p.poll() is not None for p in self.procs) or time.monotonic() > deadline:
                    raise SystemExit(f"agent workers did not start; see {self.log}")
                self._lock.wait(1.0)
            return [d for r in self.ready for d in r["device_ids"]]

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def succeeded(self, deployment_id: str) -> dict[str, float]:
        """device id -> when it reported success for ``deployment_id`` (epoch seconds)."""
        with self._lock:
            return {
                o["device_id"]: float(o["at"])
                for o in self.outcomes
                if o["deployment_id"] == deployment_id and o["state"] == "succeeded"
            }

    def wait_succeeded(self, deployment_id: str, n: int, timeout: float) -> dict[str, float]:
        deadline = time.monotonic() + timeout
        while len(done := self.succeeded(deployment_id)) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return done

    def stop(self) -> None:
        """Close the workers' stdin (they stop their agents and print ``stopped``), wait for them."""
        for proc in self.procs:
            if proc.stdin is not None:
                proc.stdin.close()
        for proc in self.procs:
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        for reader in self._readers:
            reader.join(10)
        self._logfile.close()


def wait_deployment(client: FedgeClient, deployment_id: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        dep = client.deployment(deployment_id)
        if dep.state != "rolling":
            return dep
        if time.monotonic() > deadline:
            raise SystemExit(f"deployment {deployment_id} still rolling after {timeout} s")
        time.sleep(0.2)


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
        "--procs", type=int, default=None, help="agent worker processes (default: one per 100 agents)"
    )
    parser.add_argument(
        "--probe-polls", type=int, default=None, help="polls per probe (default 1000; 200 quick)"
    )
    args = parser.parse_args(argv)
    n = args.agents or (20 if args.quick else 100)
    interval = args.poll_interval or (10.0 if args.mqtt else max(1.0, n / 100))
    waves = [float(w) for w in args.waves.split(",")] if args.waves else None
    probes = args.probe_polls or (200 if args.quick else 1000)
    procs = args.procs or max(1, -(-n // 100))  # see FleetProcesses: file descriptors under 1,024
    token = "fedge_bench_" + secrets.token_urlsafe(24)

    with tempfile.TemporaryDirectory(prefix="fedge-bench-rollout-") as tmp:
        data_dir = Path(tmp) / "controller"
        data_dir.mkdir()
        started = time.perf_counter()
        with controller_process(data_dir, token) as (url, pid):
            print(f"controller up in {time.perf_counter() - started:.1f} s at {url}", flush=True)
            model_id, version = upload(url, token, small_onnx())
            agents_dir = Path(tmp) / "agents"
            fleet = FleetProcesses(url, token, agents_dir, n, procs, interval, args.mqtt)
            try:
                t0 = time.perf_counter()
                device_ids = fleet.wait_ready(timeout=max(600.0, n * 2.0))
                enroll_s = time.perf_counter() - t0
                print(
                    f"{n} agents in {procs} process(es) enrolled and running in {enroll_s:.1f} s",
                    flush=True,
                )
                time.sleep(2.0)  # every agent has polled once (nothing deployed yet)
                spies = start_profilers(args.profile, {"controller": pid, "agents": fleet.pids[0]})
                cpu0 = cpu_seconds(pid), sum(cpu_seconds(p) for p in fleet.pids)
                posted = time.time()
                with FedgeClient(url, token) as client:
                    dep_id = client.deploy(model_id, version, device_ids=device_ids, waves=waves)
                    post_s = time.time() - posted  # the POST's own time: targets created, desired set
                    dep = wait_deployment(client, dep_id.deployment_id, args.timeout)
                controller_s = time.time() - posted
                succeeded = fleet.wait_succeeded(dep_id.deployment_id, n, timeout=30)
                window = time.time() - posted
                cpu = cpu_seconds(pid) - cpu0[0], sum(cpu_seconds(p) for p in fleet.pids) - cpu0[1]
                stop_profilers(spies)
                done = {k: v - posted for k, v in succeeded.items()}
                rejected = sum(
                    1 for o in fleet.outcomes if o["deployment_id"] == dep_id.deployment_id
                    and o["state"] != "succeeded"
                )  # fmt: skip
            finally:
                fleet.stop()  # the probe polls alone
            errors = sum(int(w["errors"]) for w in fleet.stopped)
            identity = DeviceIdentity.load(agents_dir / "p0" / "agent-0000")
            probe = probe_polls(url, pid, identity, probes)
            rss = {
                "controller": peak_rss_mb(pid),
                "agents_total": round(sum(float(w["rss_mb"]) for w in fleet.stopped), 1),
                "agents_per_process": max(float(w["rss_mb"]) for w in fleet.stopped),
            }
    lat = sorted(done.values())
    print(
        f"deployment {dep.state}: {len(lat)}/{n} agents active; latency p50 {percentile(lat, 50):.2f} s, "
        f"p95 {percentile(lat, 95):.2f} s, max {lat[-1]:.2f} s (poll interval {interval:.1f} s); "
        f"controller saw the rollout end after {controller_s:.2f} s; agent errors {errors}, "
        f"outcomes other than succeeded {rejected}"
    )
    print(
        f"peak RSS: controller {rss['controller']:.0f} MiB, agents {rss['agents_total']:.0f} MiB in {procs} "
        f"process(es); CPU during the rollout: controller {cpu[0] / window:.2f}, agents "
        f"{cpu[1] / window:.2f} cores"
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
        "post_s": round(post_s, 3),
        "deployment_done_s": round(controller_s, 3),
        "agent_errors": errors,
        "not_succeeded": rejected,
        "agent_processes": procs,
        "rollout_cpu": {  # cores busy between the POST and the last agent active
            "controller": round(cpu[0] / window, 2),
            "agents": round(cpu[1] / window, 2),
        },
        "rss_mb": rss,  # peak resident memory: the controller, the agents' worker processes
        "probe": probe,
    }
    print(json.dumps(result))
    return 0 if dep.state == "succeeded" and len(lat) == n and not rejected else 1


if __name__ == "__main__":
    raise SystemExit(main())
