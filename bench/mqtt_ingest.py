"""MQTT telemetry ingest, end to end, against the raw pub->sub rate of the same broker, side by side; and a
soak of N simulated agents at 1 msg/s each with the API's latency measured meanwhile.

**Rate** (default). Enrolled devices (real enrollment, one identity each) publish agent telemetry (an
``OutboxMessage`` with a ``MonitorSummary`` body, the agent's own JSON, QoS 1) as fast as paho sends it,
from publisher processes (each device its own connection: client id = device id, mTLS with its certificate
on Mosquitto, its device-signed JWT on the embedded broker, as :class:`edge_agent.link.mqtt.MqttLink`
connects). Two subscribers take turns, round by round, on the same broker:

- ``raw``: the controller's own broker client (:class:`controller.fleet.broker.base.Broker` from
  ``make_broker``: same service identity, same process layout as in the controller: amqtt and the client
  in one process for ``embedded``, Mosquitto as its own process) whose handler only counts messages;
- ``controller``: ``fedge-controller serve`` (its own process) -> its subscription -> ``IngestQueue`` ->
  rows committed in its SQLite database. Done when every published (device, seq) has a row (the rows are
  counted in the database, so ``lost`` is published minus committed).

Each rate is messages over the seconds from "go" (publishers connected and idle) to the last message
received (raw) or committed (controller); ``ratio`` = controller / raw per round.

**Soak** (``--soak``). N agents (default 1,000; publisher processes share them, each agent its own
connection and topic) each publish one telemetry message per second (QoS 1, start times spread over the
second) for D seconds (default 300) to a running controller, while an HTTP client calls the API at a
steady rate: a device's desired-state poll with its ETag (304, the agents' hot path), ``GET
/v1/devices/{id}`` and ``GET /v1/devices`` (every device; admin). Reported: published (PUBACKed) vs
committed rows (``lost``), the API's p50/p99/max per route and over all, the controller's CPU share,
publisher lag behind schedule and the ingest backlog at the end.

    .venv/bin/python bench/mqtt_ingest.py [--quick] [--brokers embedded,mosquitto] [--rounds R]
                                          [--devices D] [--messages M]
    .venv/bin/python bench/mqtt_ingest.py --soak [--quick] [--agents 1000] [--duration 300]
                                          [--broker mosquitto] [--profile DIR]

The last line of stdout is one JSON object (rate: ``ratio`` per broker; soak: ``lost``, ``api_p99_ms``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import random
import secrets
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

QUIET_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "DO_NOT_TRACK": "1",
}
BROKERS = ("embedded", "mosquitto")
STALL_S = 15.0
"""A count that has not moved for this long is final (messages lost, not late)."""


# ---------------------------------------------------------------- messages
def telemetry_payload(seq: int, inferences: int = 0) -> bytes:
    """One agent telemetry message as the agent's MQTT link sends it (``MqttLink.publish``)."""
    from fedge_protocol import Leaf, MonitorSummary, OutboxMessage

    body = MonitorSummary(
        model_id="3f1c9a52-6f0e-4d8b-9a47-1b2c3d4e5f60",
        version=3,
        inferences=inferences,
        latency_p50_ms=0.84,
        latency_p99_ms=2.71,
        errors={"mae": 0.0412, "mape": 3.1, "bias": -0.002},
        drift=False,
        drift_share=0.0,
        at="2026-12-02T16:00:00.000000+00:00",
    ).model_dump(mode="json")
    message = OutboxMessage.model_validate({"seq": seq, "kind": Leaf.TELEMETRY, "body": body})
    return json.dumps(message.model_dump()).encode()


def _with_seq(template: bytes, seq: int) -> bytes:
    """``telemetry_payload(1)`` with another outbox sequence number (the agent serialises each one)."""
    return template.replace(b'{"seq": 1,', b'{"seq": %d,' % seq, 1)


# ---------------------------------------------------------------- publisher processes
@dataclass(frozen=True)
class DeviceDir:
    state_dir: str
    device_id: str


def _links(devices: list[DeviceDir], url: str) -> list[Any]:
    """Each device's own connection, made the way the agent makes it (``MqttLink``)."""
    from edge_agent.identity import DeviceIdentity
    from edge_agent.link.mqtt import MqttLink

    links = []
    for d in devices:
        identity = DeviceIdentity.load(Path(d.state_dir))
        link = MqttLink(identity, Path(d.state_dir), lambda _doc: None, url=url, min_backoff=1, max_backoff=2)
        link.client.max_queued_messages_set(0)
        link.client.max_inflight_messages_set(20)
        links.append(link)
    for link in links:
        link.start()
    return links


def _wait_connected(links: list[Any], timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not all(link.connected.is_set() for link in links):
        time.sleep(0.05)
    return sum(link.connected.is_set() for link in links)


def publisher(conn: Any, devices: list[DeviceDir], url: str) -> None:
    """A publisher process: connect every device, then obey ``conn``: ``("burst", per_device,
    first_seq)`` publishes as fast as paho sends; ``("steady", seconds, first_seq, t0)`` one message per
    device per second from monotonic time ``t0`` (device i offset by i/n of a second); ``("stop",)``."""
    import logging

    import paho.mqtt.client as mqtt

    from fedge_protocol import Leaf, device_topic

    logging.getLogger("fedge.agent.mqtt").setLevel(logging.ERROR)  # not every "disconnected" at the end
    links = _links(devices, url)
    conn.send(("connected", _wait_connected(links, 60)))
    topics = [device_topic(d.device_id, Leaf.TELEMETRY) for d in devices]
    template = telemetry_payload(1)
    while True:
        cmd = conn.recv()
        if cmd[0] == "stop":
            break
        if cmd[0] == "burst":
            per_device, first = cmd[1], cmd[2]
            infos: list[Any] = []
            refused = 0
            for k in range(per_device):
                body = _with_seq(template, first + k)
                for link, topic in zip(links, topics, strict=True):
                    info = link.client.publish(topic, body, qos=1)
                    if info.rc != mqtt.MQTT_ERR_SUCCESS:
                        refused += 1
                    infos.append(info)
            acked = _await(infos, 120)
            conn.send(("done", {"published": acked, "refused": refused, "unacked": len(infos) - acked}))
        elif cmd[0] == "steady":
            conn.send(("done", _steady(links, topics, template, *cmd[1:])))
    for link in links:
        link.stop()
    conn.close()


def _await(infos: list[Any], timeout: float) -> int:
    deadline = time.monotonic() + timeout
    for info in infos:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        with contextlib.suppress(RuntimeError, ValueError):
            info.wait_for_publish(left)
    return sum(1 for info in infos if info.is_published())


def _steady(
    links: list[Any], topics: list[str], template: bytes, seconds: int, first: int, t0: float
) -> dict[str, Any]:
    """One message per device per second for ``seconds`` s (QoS 1); PUBACK latency and schedule lag."""
    import paho.mqtt.client as mqtt

    n = len(links)
    sent_at: dict[tuple[int, int], float] = {}
    acked_after: list[float] = []
    lock = threading.Lock()

    def on_publish(index: int) -> Any:
        def callback(_c: Any, _u: Any, mid: int, _rc: Any, _p: Any) -> None:
            now = time.monotonic()
            with lock:
                started = sent_at.pop((index, mid), None)
            if started is not None:
                acked_after.append(now - started)

        return callback

    for i, link in enumerate(links):
        link.client.on_publish = on_publish(i)
    infos: list[Any] = []
    lags: list[float] = []
    refused = 0
    for k in range(seconds):
        for i in range(n):
            due = t0 + k + i / n
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            else:
                lags.append(-wait)
            body = _with_seq(template, first + k)
            with lock:
                info = links[i].client.publish(topics[i], body, qos=1)
                sent_at[(i, info.mid)] = time.monotonic()
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                refused += 1
            infos.append(info)
    acked = _await(infos, 60)
    return {
        "published": acked,
        "refused": refused,
        "unacked": len(infos) - acked,
        "late_publishes": len(lags),
        "max_lag_s": round(max(lags, default=0.0), 3),
        "puback_ms": _pcts([a * 1000 for a in acked_after]),
        "reconnected": sum(1 for link in links if not link.connected.is_set()),
    }


class Publishers:
    """``processes`` publisher processes sharing ``devices`` (each device its own connection)."""

    def __init__(self, devices: list[DeviceDir], url: str, processes: int) -> None:
        ctx = mp.get_context("spawn")
        self.pipes: list[Any] = []
        self.procs: list[Any] = []
        groups = [devices[i::processes] for i in range(processes)]
        for group in groups:
            if not group:
                continue
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=publisher, args=(child, group, url), daemon=True)
            proc.start()
            self.pipes.append(parent)
            self.procs.append(proc)
        self.connected = sum(self._recv(p, 120)[1] for p in self.pipes)

    @staticmethod
    def _recv(pipe: Any, timeout: float) -> Any:
        if not pipe.poll(timeout):
            raise SystemExit("a publisher process did not answer")
        return pipe.recv()

    def send(self, *cmd: Any) -> None:
        for p in self.pipes:
            p.send(cmd)

    def results(self, timeout: float) -> list[dict[str, Any]]:
        return [self._recv(p, timeout)[1] for p in self.pipes]

    def close(self) -> None:
        for p in self.pipes:
            with contextlib.suppress(OSError):
                p.send(("stop",))
        for proc in self.procs:
            proc.join(15)
            if proc.is_alive():
                proc.kill()
                proc.join(5)


# ---------------------------------------------------------------- the raw subscriber
def raw_subscriber(conn: Any, data_dir: str, backend: str, port: int) -> None:
    """A process with the controller's broker client (and, for ``embedded``, the broker itself) made by
    ``make_broker`` on the controller's data dir, whose telemetry handler only counts."""
    from controller.config import ControllerSettings
    from controller.fleet.broker.factory import make_broker
    from controller.state import build_state
    from fedge_protocol import Leaf, every_device

    settings = ControllerSettings(data_dir=Path(data_dir), broker_backend="none", _env_file=None)
    state = build_state(settings, start_jobs=False)
    broker_settings = settings.model_copy(update={"broker_backend": backend, "broker_port": port})
    broker = make_broker(broker_settings, state.fleet)
    assert broker is not None
    count = 0
    last = 0.0

    def handler(_topic: str, _payload: bytes) -> None:
        nonlocal count, last
        count += 1
        last = time.monotonic()

    broker.subscribe(every_device(Leaf.TELEMETRY), handler)
    broker.start()
    conn.send(("ready", broker.connected))
    while True:
        cmd = conn.recv()
        if cmd[0] == "stop":
            break
        target, timeout = cmd[1], cmd[2]
        deadline, seen, quiet_since = time.monotonic() + timeout, -1, time.monotonic()
        while count < target and time.monotonic() < deadline:
            if count != seen:
                seen, quiet_since = count, time.monotonic()
            elif time.monotonic() - quiet_since > STALL_S:
                break  # nothing more is coming
            time.sleep(0.005)
        conn.send(("count", count, last))
        count = 0
    broker.stop()
    state.close()
    conn.close()


# ---------------------------------------------------------------- services
def _free_port() -> int:
    from tests.fixtures.services import free_port

    return free_port()


@contextlib.contextmanager
def mosquitto(data_dir: Path, port: int) -> Iterator[None]:
    """Mosquitto configured as the fleet broker (``render``: mTLS with the device CA, ACL, CRL)."""
    import socket

    from controller.fleet.broker.mosquitto import render
    from controller.fleet.ca import DeviceCA
    from tests.fixtures.services import _ServerProcess

    user = "root" if os.geteuid() == 0 else None
    files = render(
        DeviceCA.load_or_create(data_dir / "fleet"), data_dir / "fleet" / "mosquitto", port, user=user
    )

    def accepts() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return files.pid.exists()

    proc = _ServerProcess(
        "mosquitto", ["/usr/sbin/mosquitto", "-c", str(files.conf)], data_dir / "mosquitto.log"
    )
    try:
        proc.wait_ready(accepts, f"mosquitto on 127.0.0.1:{port}", timeout=20)
        yield
    finally:
        proc.stop()


@dataclass
class Controller:
    url: str
    pid: int


@contextlib.contextmanager
def controller(data_dir: Path, token: str, backend: str, broker_port: int) -> Iterator[Controller]:
    """``fedge-controller serve`` as its own process on a free loopback port, on ``data_dir``."""
    import httpx

    from tests.fixtures.services import _ServerProcess

    port = _free_port()
    env = {
        **os.environ,
        "FEDGE_DATA_DIR": str(data_dir),
        "FEDGE_ADMIN_TOKEN": token,
        "FEDGE_BROKER_BACKEND": backend,
        "FEDGE_BROKER_PORT": str(broker_port),
    }
    argv = [sys.executable, "-m", "controller.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--log-level", "warning"]
    url = f"http://127.0.0.1:{port}"
    proc = _ServerProcess("controller", argv, data_dir / "controller.log", env=env)

    def healthy() -> bool:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200

    try:
        proc.wait_ready(healthy, f"controller at {url}", timeout=120)
        yield Controller(url, proc.proc.pid)
    finally:
        proc.stop()


def enroll_devices(url: str, token: str, root: Path, n: int, workers: int = 4) -> list[DeviceDir]:
    """``n`` devices enrolled the way an agent enrolls (one-time token, CSR, certificate)."""
    import httpx

    from edge_agent.identity import enroll

    auth = {"Authorization": f"Bearer {token}"}

    def one(i: int) -> DeviceDir:
        with httpx.Client(base_url=url, headers=auth, timeout=60) as http:
            r = http.post("/v1/enrollment-tokens", json={"labels": {"bench": "mqtt"}, "ttl_seconds": 600})
            r.raise_for_status()
        state_dir = root / f"agent-{i:04d}"
        identity = enroll(url, r.json()["token"], state_dir, {"bench": "mqtt"}, {"cpu_count": 1})
        return DeviceDir(str(state_dir), identity.device_id)

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, range(n)))


def committed(db: Path, first: int, last: int) -> int:
    """Telemetry rows with ``first <= seq <= last`` in the controller's database."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)) as c:
        row = c.execute("SELECT count(*) FROM device_telemetry WHERE seq BETWEEN ? AND ?", (first, last))
        return int(row.fetchone()[0])


def wait_committed(db: Path, first: int, last: int, target: int, timeout: float) -> tuple[int, float]:
    """Poll the row count until ``target`` (or no progress for ``STALL_S``); (rows, when reached)."""
    deadline, seen, changed = time.monotonic() + timeout, -1, time.monotonic()
    while True:
        n = committed(db, first, last)
        now = time.monotonic()
        if n != seen:
            seen, changed = n, now
        if n >= target or now > deadline or now - changed > STALL_S:
            return n, changed
        time.sleep(0.02)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pcts(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    ordered = sorted(values)

    def q(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))], 2)

    return {"n": len(ordered), "p50": q(0.5), "p99": q(0.99), "max": round(ordered[-1], 2)}


# ---------------------------------------------------------------- rate mode
@dataclass
class RateSetup:
    backend: str
    data_dir: Path
    token: str
    port: int
    url: str
    devices: list[DeviceDir]
    processes: int

    @property
    def db(self) -> Path:
        return self.data_dir / "fedge.db"


def raw_round(setup: RateSetup, per_device: int, first: int) -> dict[str, Any]:
    """Publishers -> broker -> the controller's broker client, counting (its own process)."""
    total = per_device * len(setup.devices)
    parent, child = mp.get_context("spawn").Pipe()
    sub = mp.get_context("spawn").Process(
        target=raw_subscriber, args=(child, str(setup.data_dir), setup.backend, setup.port)
    )
    sub.start()
    try:
        if not parent.poll(120) or not parent.recv()[1]:
            raise SystemExit(f"the raw subscriber did not connect to {setup.backend}")
        pubs = Publishers(setup.devices, setup.url, setup.processes)
        try:
            parent.send(("count", total, 120))
            t0 = time.monotonic()
            pubs.send("burst", per_device, first)
            sent = pubs.results(180)
            if not parent.poll(180):
                raise SystemExit("the raw subscriber did not answer")
            _, received, t_last = parent.recv()
        finally:
            pubs.close()
        parent.send(("stop",))
        sub.join(30)
    finally:
        if sub.is_alive():
            sub.kill()
    rate = received / (t_last - t0) if received else 0.0
    published = sum(x["published"] for x in sent)
    return {"side": "raw", "published": published, "received": received, "msgs_s": round(rate, 1)}


def controller_round(setup: RateSetup, per_device: int, first: int) -> dict[str, Any]:
    """Publishers -> broker -> ``fedge-controller serve`` -> rows committed in its database."""
    with controller(setup.data_dir, setup.token, setup.backend, setup.port) as ctl:
        pubs = Publishers(setup.devices, setup.url, setup.processes)
        try:
            cpu0 = cpu_seconds(ctl.pid)
            t0 = time.monotonic()
            pubs.send("burst", per_device, first)
            sent = pubs.results(180)
            published = sum(x["published"] for x in sent)
            rows, t_last = wait_committed(setup.db, first, first + per_device - 1, published, 120)
            cpu = cpu_seconds(ctl.pid) - cpu0
        finally:
            pubs.close()
    return {
        "side": "controller",
        "published": published,
        "committed": rows,
        "lost": published - rows,
        "msgs_s": round(rows / (t_last - t0), 1) if rows else 0.0,
        "controller_cpu_ms_per_msg": round(cpu / max(rows, 1) * 1000, 3),
    }


def rate_one_broker(backend: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Raw and controller rounds alternating (raw first in even rounds), on one broker."""
    data_dir = tmp / backend / "controller"
    data_dir.mkdir(parents=True)
    token = "fedge_bench_" + secrets.token_urlsafe(24)
    port = _free_port()
    url = f"{'mqtts' if backend == 'mosquitto' else 'mqtt'}://127.0.0.1:{port}"
    per_device = args.messages // args.devices
    rounds: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        if backend == "mosquitto":
            stack.enter_context(mosquitto(data_dir, port))
        with controller(data_dir, token, backend, port) as ctl:
            devices = enroll_devices(ctl.url, token, tmp / backend / "agents", args.devices)
        setup = RateSetup(backend, data_dir, token, port, url, devices, args.processes)
        seq = 1  # outbox sequences keep growing across rounds, as an agent's do
        for r in range(args.rounds):
            for side in ("raw", "controller") if r % 2 == 0 else ("controller", "raw"):
                measure = raw_round if side == "raw" else controller_round
                rounds.append({"round": r, **measure(setup, per_device, seq)})
                seq += per_device
                print(f"{backend} round {r} {side}: {json.dumps(rounds[-1])}", flush=True)
    raw = [x["msgs_s"] for x in rounds if x["side"] == "raw"]
    ctl_rates = [x["msgs_s"] for x in rounds if x["side"] == "controller"]
    ratios = [c / w for c, w in zip(ctl_rates, raw, strict=True) if w]
    return {
        "raw_msgs_s": raw,
        "controller_msgs_s": ctl_rates,
        "ratio": [round(x, 3) for x in ratios],
        "ratio_median": round(statistics.median(ratios), 3) if ratios else None,
        "lost": sum(x.get("lost", 0) for x in rounds),
        "raw_missing": sum(x["published"] - x["received"] for x in rounds if x["side"] == "raw"),
        "controller_cpu_ms_per_msg": [x["controller_cpu_ms_per_msg"] for x in rounds if "lost" in x],
    }


# ---------------------------------------------------------------- soak mode
def _profilers(out: Path | None, pids: dict[str, int]) -> list[Any]:
    """py-spy of the controller over the measured window (``--profile DIR``; bench/_services.py)."""
    if out is None:
        return []
    from bench._services import start_profilers

    return start_profilers(out, pids)


def _stop_profilers(spies: list[Any]) -> None:
    if spies:
        from bench._services import stop_profilers

        stop_profilers(spies)


class Prober(threading.Thread):
    """Calls the API at ``rate`` requests/s (cycling routes) and records each latency in ms."""

    def __init__(self, url: str, token: str, identities: list[Any], rate: float) -> None:
        super().__init__(daemon=True, name="bench-api-prober")
        self.url, self.token, self.identities, self.rate = url, token, identities, rate
        self.latency: dict[str, list[float]] = {"poll_304": [], "device": [], "list": []}
        self.errors: dict[str, int] = {}
        self.stopping = threading.Event()

    def run(self) -> None:
        import httpx

        rng = random.Random(0)
        admin = {"Authorization": f"Bearer {self.token}"}
        tokens: dict[str, tuple[str, str]] = {}  # device id -> (jwt, etag)
        with httpx.Client(base_url=self.url, timeout=30) as http:
            k, t_next = 0, time.monotonic()
            while not self.stopping.is_set():
                identity = rng.choice(self.identities)
                route = "list" if k % 20 == 19 else ("poll_304", "device")[k % 2]  # list: 1 in 20
                k += 1
                t = time.perf_counter()
                try:
                    if route == "poll_304":
                        jwt, etag = tokens.get(identity.device_id) or (identity.sign_jwt(300), "")
                        headers = {"Authorization": f"Bearer {jwt}", "If-None-Match": etag}
                        r = http.get(f"/v1/devices/{identity.device_id}/desired-state", headers=headers)
                        tokens[identity.device_id] = (jwt, r.headers.get("etag", ""))
                        ok = r.status_code in (200, 304)
                    elif route == "device":
                        r = http.get(f"/v1/devices/{identity.device_id}", headers=admin)
                        ok = r.status_code == 200
                    else:
                        r = http.get("/v1/devices", headers=admin)
                        ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                took = (time.perf_counter() - t) * 1000
                if ok:
                    self.latency[route].append(took)
                else:
                    self.errors[route] = self.errors.get(route, 0) + 1
                t_next += 1 / self.rate
                self.stopping.wait(max(0.0, t_next - time.monotonic()))


def soak(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from edge_agent.identity import DeviceIdentity

    backend = args.broker
    data_dir = tmp / "controller"
    data_dir.mkdir(parents=True)
    token = "fedge_bench_" + secrets.token_urlsafe(24)
    port = _free_port()
    url = f"{'mqtts' if backend == 'mosquitto' else 'mqtt'}://127.0.0.1:{port}"
    db = data_dir / "fedge.db"
    n, seconds = args.agents, args.duration
    with contextlib.ExitStack() as stack:
        if backend == "mosquitto":
            stack.enter_context(mosquitto(data_dir, port))
        ctl = stack.enter_context(controller(data_dir, token, backend, port))
        t = time.monotonic()
        devices = enroll_devices(ctl.url, token, tmp / "agents", n)
        print(f"enrolled {n} agents in {time.monotonic() - t:.1f} s", flush=True)
        t = time.monotonic()
        pubs = Publishers(devices, url, args.processes)
        print(
            f"{pubs.connected}/{n} agents connected to {backend} in {time.monotonic() - t:.1f} s", flush=True
        )
        try:
            identities = [DeviceIdentity.load(Path(d.state_dir)) for d in devices]
            idle = Prober(
                ctl.url, token, identities, args.api_rate
            )  # the same calls, agents connected, quiet
            idle.start()
            time.sleep(args.baseline)
            idle.stopping.set()
            idle.join(30)
            prober = Prober(ctl.url, token, identities, args.api_rate)
            spies = _profilers(args.profile, {"controller-soak": ctl.pid})
            t0 = time.monotonic() + 2.0
            cpu0 = cpu_seconds(ctl.pid)
            pubs.send("steady", seconds, 1, t0)
            time.sleep(max(0.0, t0 - time.monotonic()))
            prober.start()
            progress: list[tuple[float, int]] = []
            while time.monotonic() < t0 + seconds:
                time.sleep(min(10.0, max(0.1, t0 + seconds - time.monotonic())))
                progress.append((round(time.monotonic() - t0, 1), committed(db, 1, seconds)))
                print(f"  t={progress[-1][0]:.0f} s: {progress[-1][1]} rows committed", flush=True)
            cpu = cpu_seconds(ctl.pid) - cpu0
            wall = time.monotonic() - t0
            _stop_profilers(spies)
            prober.stopping.set()
            prober.join(30)
            sent = pubs.results(120)
            published = sum(s["published"] for s in sent)
            backlog = published - committed(db, 1, seconds)
            rows, t_done = wait_committed(db, 1, seconds, published, 900)  # drained, or stalled
        finally:
            pubs.close()
    every = [v for values in prober.latency.values() for v in values]
    every_idle = [v for values in idle.latency.values() for v in values]
    return {
        "broker": backend,
        "agents": n,
        "connected": pubs.connected,
        "duration_s": seconds,
        "published": published,
        "committed": rows,
        "lost": published - rows,
        "unacked": sum(s["unacked"] for s in sent),
        "refused": sum(s["refused"] for s in sent),
        "backlog_at_end": backlog,
        "ingest_msgs_s_during": round(progress[-1][1] / seconds, 1) if progress else None,
        "drained_after_s": round(t_done - t0 - seconds, 2),
        "controller_cpu_share": round(cpu / wall, 3),
        "api_ms": {route: _pcts(v) for route, v in prober.latency.items()},
        "api_p99_ms": _pcts(every).get("p99"),
        "api_errors": prober.errors,
        "api_idle_ms": {route: _pcts(v) for route, v in idle.latency.items()},
        "api_idle_p99_ms": _pcts(every_idle).get("p99"),
        "puback_ms": [s["puback_ms"] for s in sent],
        "publisher_max_lag_s": max(s["max_lag_s"] for s in sent),
        "late_publishes": sum(s["late_publishes"] for s in sent),
        "progress": progress,
    }


# ---------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="rate: 1 round of 2,000; soak: 200 agents x 30 s"
    )
    parser.add_argument("--brokers", default=",".join(BROKERS), help="rate mode: embedded,mosquitto")
    parser.add_argument("--rounds", type=int, default=None, help="rate mode (default 3; 1 with --quick)")
    parser.add_argument("--devices", type=int, default=20, help="rate mode: publishing devices")
    parser.add_argument("--messages", type=int, default=None, help="rate mode, per round (default 10,000)")
    parser.add_argument("--processes", type=int, default=None, help="publisher processes (2; soak 4)")
    parser.add_argument("--soak", action="store_true")
    parser.add_argument("--agents", type=int, default=None, help="soak (default 1000; 200 with --quick)")
    parser.add_argument("--duration", type=int, default=None, help="soak seconds (300; 30 with --quick)")
    parser.add_argument("--broker", choices=BROKERS, default="mosquitto", help="soak")
    parser.add_argument("--api-rate", type=float, default=10.0, help="soak: API requests per second")
    parser.add_argument("--profile", type=Path, default=None, help="soak: py-spy of the controller into DIR")
    parser.add_argument("--baseline", type=float, default=None, help="soak: API-only seconds first (20; 10)")
    args = parser.parse_args(argv)
    os.environ.update(QUIET_ENV)
    size = len(telemetry_payload(1))
    with tempfile.TemporaryDirectory(prefix="fedge-bench-mqtt-") as tmp:
        if args.soak:
            args.agents = args.agents or (200 if args.quick else 1000)
            args.duration = args.duration or (30 if args.quick else 300)
            args.processes = args.processes or 4
            args.baseline = args.baseline if args.baseline is not None else (10.0 if args.quick else 20.0)
            out = {"bench": "mqtt_ingest", "mode": "soak", "message_bytes": size, **soak(args, Path(tmp))}
            print(
                f"soak {out['agents']} agents x 1 msg/s x {out['duration_s']} s on {out['broker']}: "
                f"published {out['published']}, committed {out['committed']}, lost {out['lost']}; API p99 "
                f"{out['api_p99_ms']} ms ({out['api_ms']}; before the agents published: "
                f"{out['api_idle_p99_ms']} ms); controller CPU {out['controller_cpu_share']:.2f}"
            )
        else:
            args.rounds = args.rounds or (1 if args.quick else 3)
            args.messages = args.messages or (2000 if args.quick else 10_000)
            args.processes = args.processes or 2
            results = {b: rate_one_broker(b, args, Path(tmp)) for b in args.brokers.split(",")}
            for b, res in results.items():
                print(
                    f"{b}: raw pub->sub {res['raw_msgs_s']} msg/s, controller ingest "
                    f"{res['controller_msgs_s']} msg/s, ratio {res['ratio']}, lost {res['lost']}"
                )
            out = {
                "bench": "mqtt_ingest",
                "mode": "rate",
                "message_bytes": size,
                "devices": args.devices,
                "messages_per_round": args.messages // args.devices * args.devices,
                "rounds": args.rounds,
                **{b: {k: v for k, v in r.items() if k != "rounds"} for b, r in results.items()},
            }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
