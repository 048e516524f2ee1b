"""A deployment-mode federation on loopback: the controller's Flower engine and real SuperNodes, timed.

:func:`run_loopback` runs one job the way a controller does, without the controller's HTTP service: a
:class:`~controller.federation.flower.FlowerEngine` (a supervised ``flower-superlink`` with TLS from a
fresh device CA and SuperNode authentication, behind the Fleet-only front), one EC P-256 key per device
registered with ``RegisterNode``, one real ``flower-supernode`` per partition of a
:class:`~simulator.fl.partition.FederatedData` (its own ``FLWR_HOME``, ``--node-config`` with the
device's ``.npz``, ``--isolation subprocess``: the SuperNode's SuperExec starts one ``flwr-clientapp``
process per message), and a loopback report receiver standing in for the controller's report route.

What it records, besides the ServerApp's round reports (:class:`LoopbackOutcome`):

* every SuperNode's log, each line stamped (``time.monotonic``) as it arrives: one
  :class:`MessageTrace` per message (receiving, received, sending, sent);
* every ``flwr-clientapp`` process (a ``/proc`` scan every 50 ms for the SuperNodes' descendants): its
  start (from ``/proc/<pid>/stat``) and end, as :class:`ProcessSpan`;
* the HTTP body bytes through the Fleet front both ways while the job ran (every Fleet request of every
  device: messages, object pushes and pulls, heartbeats, polls).

:func:`timeline` splits each phase into the time the ClientApp processes lived, the SuperNode's own
hand-offs (SuperExec pickup, reply pickup) and the rest (Flower's pull polling on both sides).
Loopback only; every process started here is stopped by PID (process group, then the tag).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any

from fedge_common.quiet import QUIET_ENV as QUIET
from fedge_protocol.federation import NodeKey
from simulator.fl.partition import FederatedData

__all__ = [
    "LoopbackJob",
    "LoopbackOutcome",
    "MessageTrace",
    "ProcessSpan",
    "parse_supernode_log",
    "run_loopback",
    "timeline",
]

QUIET_ENV = {**QUIET, "PYTHONUNBUFFERED": "1"}
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_ROUND = re.compile(r"\[RUN (\d+), ROUND (\d+)\]")
_RECEIVING = re.compile(r"Receiving: (\w+) message")
_SENDING = re.compile(r"Sending: (\w+) message")


@dataclass(frozen=True)
class LoopbackJob:
    rounds: int = 3
    network: str = "digits-mlp"
    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 0.1
    momentum: float = 0.0
    seed: int = 0
    strategy: Mapping[str, Any] = field(default_factory=lambda: {"name": "fedavg"})
    dp_epsilon: float = 0.0  # local DP target per device (0: off); each device's budget is the target
    dp_delta: float = 1e-5
    secure_aggregation: Mapping[str, Any] | None = None  # SecAgg+ settings (controller.federation.secagg)
    round_timeout_s: float = 300.0
    node_wait_s: float = 180.0
    timeout_s: float = 1800.0


@dataclass
class MessageTrace:
    """One message on one SuperNode, from its log (monotonic seconds)."""

    device: int
    round: int
    kind: str
    receiving: float
    received: float | None = None
    clientapp_log: float | None = None  # the ClientApp process's first log line (after importing flwr)
    sending: float | None = None
    sent: float | None = None


@dataclass
class ProcessSpan:
    """One ``flwr-clientapp`` process (monotonic seconds; ``ended`` None: still running at the end)."""

    device: int
    pid: int
    started: float
    ended: float | None = None

    @property
    def seconds(self) -> float | None:
        return None if self.ended is None else self.ended - self.started


@dataclass
class LoopbackOutcome:
    state: str  # succeeded | failed | cancelled
    reason: str | None
    reports: list[dict[str, Any]]  # the ServerApp's round reports (type "round"), in order
    seconds: float  # StartRun to the end of the run
    messages: list[MessageTrace]
    clientapps: list[ProcessSpan]
    wire: dict[str, int]  # HTTP body bytes through the Fleet front during the run: in, out, requests
    superlink_start_s: float
    devices: int
    model_bytes: int  # the global model's size as float32 (4 bytes per parameter)
    logs: dict[int, str] = field(default_factory=dict)  # each SuperNode's log tail (on failure)


# ------------------------------------------------------------------------------ logs and processes


def parse_supernode_log(device: int, lines: Sequence[tuple[float, str]]) -> list[MessageTrace]:
    """Message traces from a SuperNode's stamped log lines (``(monotonic, text)``; its ClientApp
    processes write to the same stream). Flower logs ``[RUN r, ROUND g]`` only for messages with a group
    id; without one, a message's round is the count of train messages so far (every device trains and
    evaluates every round)."""
    traces: list[MessageTrace] = []
    logged_round: int | None = None
    trains = 0
    open_trace: MessageTrace | None = None
    for stamp, raw in lines:
        text = _ANSI.sub("", raw)
        if m := _ROUND.search(text):
            logged_round = int(m.group(2))
        elif m := _RECEIVING.search(text):
            kind = m.group(1)
            trains += kind == "train"
            open_trace = MessageTrace(device, logged_round or trains, kind, stamp)
            traces.append(open_trace)
            logged_round = None
        elif open_trace is None:
            continue
        elif "Received successfully" in text:
            open_trace.received = stamp
        elif "Start `flwr-clientapp` process" in text:
            open_trace.clientapp_log = stamp
        elif _SENDING.search(text):
            open_trace.sending = stamp
        elif "Sent successfully" in text:
            open_trace.sent = stamp
            open_trace = None
    return traces


class _StampedLog:
    """Reads a process's output line by line, stamps each line and appends it to a file."""

    def __init__(self, stream: IO[bytes], path: Path) -> None:
        self.lines: list[tuple[float, str]] = []
        self._stream, self._path = stream, path
        self._thread = threading.Thread(target=self._read, name=f"log-{path.stem}", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        with self._path.open("ab") as out:
            for raw in iter(self._stream.readline, b""):
                self.lines.append((time.monotonic(), raw.decode("utf-8", "replace").rstrip("\n")))
                out.write(raw)
                out.flush()

    def join(self, timeout: float = 5.0) -> None:
        self._thread.join(timeout)

    def tail(self, n: int = 30) -> str:
        return "\n".join(_ANSI.sub("", text) for _, text in self.lines[-n:])


def _boot_offset() -> float:
    """monotonic - seconds since boot (``/proc/<pid>/stat`` start times count from boot)."""
    return time.monotonic() - time.clock_gettime(time.CLOCK_BOOTTIME)


class ClientAppMonitor:
    """Scans ``/proc`` every ``interval`` seconds for ``flwr-clientapp`` processes descending from the
    watched SuperNodes (:meth:`watch`). Each process's ``stat`` is read once (parent, start time); only the
    watched SuperNodes' descendants have their command line read, again on every scan until it names
    ``flwr-clientapp`` (a fork reads as its parent until it execs)."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.spans: dict[int, ProcessSpan] = {}
        self._roots: dict[int, int] = {}  # SuperNode pid -> device
        self._procs: dict[int, tuple[int, float]] = {}  # pid -> (parent pid, start on the monotonic clock)
        self._device: dict[int, int] = {}  # descendant pid -> device
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._tick = os.sysconf("SC_CLK_TCK")
        self._offset = _boot_offset()
        self._thread = threading.Thread(target=self._run, name="clientapp-monitor", daemon=True)

    def watch(self, pid: int, device: int) -> None:
        with self._lock:
            self._roots[pid] = device

    def __enter__(self) -> ClientAppMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        deadline = time.monotonic() + 10.0  # the last ClientApps exit after their reply is out
        while any(s.ended is None for s in self.spans.values()) and time.monotonic() < deadline:
            time.sleep(self.interval)
        self._stop.set()
        self._thread.join(5)

    def _stat(self, pid: int) -> tuple[str, int, float] | None:
        """(state, parent pid, start time on the monotonic clock)."""
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        return fields[0], int(fields[1]), int(fields[19]) / self._tick + self._offset

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.scan()

    def scan(self) -> None:
        now = time.monotonic()
        try:
            pids = {int(e) for e in os.listdir("/proc") if e.isdigit()}
        except OSError:
            return
        for pid in set(self._procs) - pids:
            del self._procs[pid]
            self._device.pop(pid, None)
        with self._lock:
            roots = dict(self._roots)
        new = []
        for pid in pids - set(self._procs):
            stat = self._stat(pid)
            if stat is not None:
                self._procs[pid] = (stat[1], stat[2])
                new.append(pid)
        changed = True
        while changed:  # a child listed before its parent gets its device on the next pass
            changed = False
            for pid in new:
                parent = self._procs[pid][0]
                device = roots.get(parent, self._device.get(parent))
                if pid not in self._device and device is not None:
                    self._device[pid] = device
                    changed = True
        for pid, span in self.spans.items():
            if span.ended is None:
                stat = self._stat(pid) if pid in pids else None
                if stat is None or stat[0] == "Z" or abs(stat[2] - span.started) > 0.5:
                    span.ended = now - self.interval / 2
        for pid, device in self._device.items():
            if pid in self.spans or self._procs[pid][0] in self.spans:
                continue  # known, or a ClientApp's own child
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"flwr-clientapp" in cmdline:
                self.spans[pid] = ProcessSpan(device, pid, self._procs[pid][1])


# ---------------------------------------------------------------------------------- the analysis


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def timeline(outcome: LoopbackOutcome) -> dict[str, Any]:
    """Where each phase's time went (seconds). Per phase, over its messages (the slowest device for
    ``node_s``, else the median):

    * ``phase_s``: the ServerApp's wall time of the phase (messages sent to the last reply in);
    * ``node_s``: a SuperNode's part: message received to reply sent (the slowest device);
    * ``polling_s``: ``phase_s - node_s``: the ServerApp's and the SuperNodes' pull polling, transfers;
    * ``pickup_s``: message stored on the SuperNode to its ``flwr-clientapp`` process started (SuperExec
      polls its SuperNode for tasks);
    * ``startup_s``: process started to its first log line (interpreter start, importing flwr);
    * ``app_s``: that line to the SuperNode sending the reply (pull the task, install the FAB, load the
      ClientApp: import torch and the agent; the handler; push the reply; the SuperNode's reply poll);
    * ``clientapp_s``: the process's whole life (its exit continues after the reply is out).

    ``median`` holds the medians over the phases after round 1 (round 1 pays one-off costs: the FAB's
    first install on every device, cold file caches), per phase kind."""
    spans = sorted(outcome.clientapps, key=lambda s: s.started)
    rows: list[dict[str, Any]] = []
    for report in outcome.reports:
        rnd, kind, seconds = int(report["round"]), str(report["kind"]), float(report["seconds"])
        traces = [t for t in outcome.messages if t.round == rnd and t.kind == kind]
        node: list[float] = []
        parts: dict[str, list[float]] = {"pickup_s": [], "startup_s": [], "app_s": [], "clientapp_s": []}
        for t in traces:
            if t.sent is not None:
                node.append(t.sent - t.receiving)
            if t.received is None or t.sending is None:
                continue
            received, sending = t.received, t.sending
            span = next(
                (s for s in spans if s.device == t.device and received - 0.2 <= s.started <= sending), None
            )
            if span is None:
                continue
            parts["pickup_s"].append(max(span.started - received, 0.0))
            if t.clientapp_log is not None:
                parts["startup_s"].append(t.clientapp_log - span.started)
                parts["app_s"].append(sending - t.clientapp_log)
            if span.seconds is not None:
                parts["clientapp_s"].append(span.seconds)
        row: dict[str, Any] = {"round": rnd, "kind": kind, "phase_s": seconds, "messages": len(traces)}
        row["node_s"] = max(node) if node else None
        row["polling_s"] = seconds - max(node) if node else None
        row.update({key: _median(values) for key, values in parts.items()})
        rows.append(row)
    later = [r for r in rows if r["round"] > 1] or rows
    keys = ("phase_s", "node_s", "polling_s", "pickup_s", "startup_s", "app_s", "clientapp_s")

    def med(key: str, kind: str) -> float | None:
        values = [r[key] for r in later if r[key] is not None and r["kind"] == kind]
        return round(statistics.median(values), 3) if values else None

    lives = [s.seconds for s in spans if s.seconds is not None]
    return {
        "phases": rows,
        "median": {key: {"train": med(key, "train"), "evaluate": med(key, "evaluate")} for key in keys},
        "clientapp_processes": len(spans),
        "clientapp_s_all": round(statistics.median(lives), 3) if lives else None,
    }


# ------------------------------------------------------------------------------- the federation


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Receiver:
    """The controller's report route in miniature: POST /reports/<job> with the job's bearer token."""

    def __init__(self, deliver: Callable[[str, Mapping[str, Any]], bool], token: str) -> None:
        expected = f"Bearer {token}"

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                if self.headers.get("authorization") != expected or not self.path.startswith("/reports/"):
                    self.send_response(401)
                    self.end_headers()
                    return
                ok = deliver(self.path.removeprefix("/reports/"), json.loads(body))
                self.send_response(204 if ok else 404)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="reports", daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _counting_front(front: Any) -> Any:
    """The engine's Fleet front, counting HTTP body bytes both ways (an ASGI wrapper around its app)."""
    from controller.federation.flower import FleetFront

    class CountingFront(FleetFront):
        def __init__(self) -> None:
            super().__init__(front.upstream, front.upstream_ca, front.tls, host=front.host, port=front.port)
            self.counts = {"bytes_in": 0, "bytes_out": 0, "requests": 0}

        def app(self) -> Any:
            inner = super().app()
            counts = self.counts

            async def counted(scope: Any, receive: Any, send: Any) -> None:
                if scope["type"] != "http":
                    await inner(scope, receive, send)
                    return
                counts["requests"] += 1

                async def rx() -> Any:
                    message = await receive()
                    if message["type"] == "http.request":
                        counts["bytes_in"] += len(message.get("body", b""))
                    return message

                async def tx(message: Any) -> None:
                    if message["type"] == "http.response.body":
                        counts["bytes_out"] += len(message.get("body", b""))
                    await send(message)

                await inner(scope, rx, tx)

            return counted

    return CountingFront()


def _model_bytes(network: str) -> int:
    from edge_agent.learning.models import build_model

    return sum(4 * int(p.numel()) for p in build_model(network).state_dict().values())


@contextlib.contextmanager
def _processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


def run_loopback(
    data: FederatedData,
    job: LoopbackJob,
    workdir: Path,
    *,
    bin_dir: Path | None = None,
    on_round: Callable[[Mapping[str, Any]], None] | None = None,
) -> LoopbackOutcome:
    """Run one job over ``data.num_clients`` real SuperNodes against the engine's SuperLink (see the
    module docstring); everything it starts is stopped before it returns."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from controller.federation.base import FederationSpec
    from controller.federation.flower import TAG_ENV, FlowerEngine, kill_tagged
    from controller.fleet.ca import DeviceCA

    bin_dir = bin_dir or Path(sys.executable).parent
    workdir.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex
    engine = FlowerEngine(workdir / "federation", DeviceCA.load_or_create(workdir / "ca"), start_timeout=120)
    engine.front = front = _counting_front(engine.front)
    token = secrets.token_urlsafe(24)
    reports: list[dict[str, Any]] = []
    logs: dict[int, _StampedLog] = {}

    def collect(report: Mapping[str, Any]) -> None:
        if report.get("type") == "round":
            reports.append(dict(report))
            if on_round is not None:
                on_round(report)

    receiver = _Receiver(engine.deliver, token)
    began = time.monotonic()
    try:
        with _processes() as procs, ClientAppMonitor() as monitor:
            engine.start()
            superlink_start = time.monotonic() - began
            endpoint = engine.fleet_endpoint()
            node_ids = []
            for k in range(data.num_clients):
                device_dir = workdir / f"device-{k}"
                (device_dir / "flwr").mkdir(parents=True, exist_ok=True)
                (device_dir / "flwr" / "config.toml").write_text("[superlink]\n")
                key = ec.generate_private_key(ec.SECP256R1())
                public = key.public_key().public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
                node_ids.append(engine.register_node(f"loopback-device-{k}", public))
                key_path = device_dir / "supernode-key"
                key_path.write_bytes(
                    key.private_bytes(
                        serialization.Encoding.PEM,
                        serialization.PrivateFormat.OpenSSH,
                        serialization.NoEncryption(),
                    )
                )
                key_path.chmod(0o600)
                ca_path = device_dir / "superlink-ca.pem"
                ca_path.write_text(endpoint.root_certificate)
            paths = data.write(workdir / "data")
            for k, path in enumerate(paths):
                device_dir = workdir / f"device-{k}"
                node_config = device_dir / "node-config.toml"
                keys: dict[str, str | float] = {
                    NodeKey.DATA_PATH: str(path),
                    NodeKey.STATE_DIR: str(device_dir),
                    NodeKey.DATASET_ID: "digits",
                    NodeKey.PRIVACY_BUDGET: float(job.dp_epsilon),
                    NodeKey.PRIVACY_DELTA: float(job.dp_delta),
                }
                node_config.write_text(
                    "".join(f"{json.dumps(k)} = {json.dumps(v)}\n" for k, v in keys.items())
                )
                argv = [
                    str(bin_dir / "flower-supernode"), "--superlink", endpoint.address,
                    "--root-certificates", str(device_dir / "superlink-ca.pem"),
                    "--auth-supernode-private-key", str(device_dir / "supernode-key"),
                    "--host", "127.0.0.1", "--port", str(_free_port()),
                    "--node-config", str(node_config), "--isolation", "subprocess",
                ]  # fmt: skip
                env = {
                    **os.environ,
                    **QUIET_ENV,
                    "FLWR_HOME": str(device_dir / "flwr"),
                    TAG_ENV: tag,
                    "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
                }
                proc = subprocess.Popen(
                    argv,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
                procs.append(proc)
                monitor.watch(proc.pid, k)
                assert proc.stdout is not None
                logs[k] = _StampedLog(proc.stdout, device_dir / "supernode.log")
            job_id = f"loopback-{tag[:12]}"
            spec = FederationSpec(
                job_id=job_id,
                rounds=job.rounds,
                min_clients=data.num_clients,
                strategy=dict(job.strategy),
                network=job.network,
                workdir=workdir / "job",
                output_path=workdir / "job" / "final.npz",
                report_url=f"{receiver.url}/reports/{job_id}",
                report_token=token,
                participant_nodes=tuple(node_ids),
                seed=job.seed,
                local_epochs=job.local_epochs,
                batch_size=job.batch_size,
                lr=job.lr,
                momentum=job.momentum,
                dp_target_epsilon=job.dp_epsilon,
                dp_delta=job.dp_delta,
                secure_aggregation=job.secure_aggregation,
                round_timeout_s=job.round_timeout_s,
                node_wait_s=job.node_wait_s,
                timeout_s=job.timeout_s,
            )
            spec.workdir.mkdir(parents=True, exist_ok=True)
            before = dict(front.counts)
            outcome = engine.run(spec, threading.Event(), collect)
            wire = {key: front.counts[key] - before[key] for key in before}
    finally:
        kill_tagged(tag)
        receiver.close()
        engine.close()
    messages: list[MessageTrace] = []
    for k, log in logs.items():
        log.join()
        messages.extend(parse_supernode_log(k, log.lines))
    return LoopbackOutcome(
        state=outcome.state.value,
        reason=outcome.reason,
        reports=reports,
        seconds=outcome.seconds,
        messages=messages,
        clientapps=sorted(monitor.spans.values(), key=lambda s: s.started),
        wire=wire,
        superlink_start_s=superlink_start,
        devices=data.num_clients,
        model_bytes=_model_bytes(job.network),
        logs={k: log.tail() for k, log in logs.items()} if outcome.state.value != "succeeded" else {},
    )
