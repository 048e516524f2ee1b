"""Online-learning ingest on the agent: messages/s through transformer + predict + update (the agent's
``OnlineService``: paho -> bounded queue -> worker) vs the raw paho subscribe rate, same broker, same
messages, side by side.

The broker is a real Mosquitto on loopback (``tests/edge_agent/online/broker.py``). Each measurement
first registers a persistent session (QoS 1), publishes all N messages into it while the subscriber is
away, then connects the subscriber and times the drain: from the first message received to the last
one received (raw: paho's ``on_message`` counts) or processed (online: the learner has run every
message). So the publisher's speed is out of the ratio, and both sides read the same queued stream.
Messages are the UC10 smart-meter stream (``{"timestamp", "consumption"}`` every 15 min, 36 lags, 24 h
ahead). Raw and online runs alternate round by round. Latency: per message, the time of
``learner.update`` (transformer, predict, learn; p50/p99) measured inside the worker. ``learner msg/s``:
the same messages through ``learner.update`` in a plain loop (no broker, no threads), the learner's own
ceiling, to tell learning cost from the cost of sharing one interpreter with paho's thread. ``cpu
ratio``: messages per CPU second of this process (the broker is another process), online over raw: on
a crowded machine the wall-clock ratio also measures how much CPU the scheduler gave each side.

    .venv/bin/python bench/online_ingest.py [--quick] [--rounds R] [--messages N]

The last line of stdout is a JSON summary with ``ingest_ratio`` (River: goal >= 0.5).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.online.config import OnlineConfig
from edge_agent.online.service import OnlineService
from tests.edge_agent.online.broker import MOSQUITTO, sensor_broker
from tests.edge_agent.online.streams import meter_stream

TOPIC = "site/meters/bench/W4"
BACKENDS = ("river", "sklearn", "torch")
SHARE = {"river": 1.0, "sklearn": 0.2, "torch": 0.2}  # slower backends get fewer messages per round


def _client(client_id: str, clean: bool) -> mqtt.Client:
    return mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean, protocol=mqtt.MQTTv311
    )


def register_session(port: int, client_id: str) -> None:
    """Subscribe once with a persistent session, then leave: the broker queues what comes next."""
    done = threading.Event()
    client = _client(client_id, clean=False)
    client.on_subscribe = lambda *_a: done.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    client.subscribe(TOPIC, qos=1)
    if not done.wait(10):
        raise RuntimeError("the broker did not confirm the subscription")
    client.disconnect()
    client.loop_stop()


def publish_all(port: int, payloads: list[bytes]) -> None:
    client = _client("", clean=True)
    client.max_inflight_messages_set(1000)
    client.connect("127.0.0.1", port)
    client.loop_start()
    infos = [client.publish(TOPIC, p, qos=1) for p in payloads]
    for info in infos:
        info.wait_for_publish(60)
    client.disconnect()
    client.loop_stop()


def drain_raw(port: int, client_id: str, count: int) -> tuple[float, float]:
    """Messages/s of a bare paho subscriber draining ``count`` queued messages, and per CPU second."""
    times: list[float] = []
    done = threading.Event()

    def on_message(_c: Any, _u: Any, _m: mqtt.MQTTMessage) -> None:
        times.append(time.perf_counter())
        if len(times) == count:
            done.set()

    client = _client(client_id, clean=False)
    client.on_message = on_message
    cpu = time.process_time()
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        if not done.wait(600):
            raise RuntimeError(f"raw subscriber got {len(times)} of {count}")
        cpu = time.process_time() - cpu
    finally:
        client.disconnect()
        client.loop_stop()
    return (count - 1) / (times[-1] - times[0]), count / cpu


def drain_online(
    port: int, client_id: str, backend: str, count: int, state: Path
) -> tuple[float, float, list[float]]:
    """Messages/s of the OnlineService draining ``count`` queued messages, per CPU second; update seconds."""
    config = OnlineConfig.model_validate(
        {
            "learners": [
                {
                    "name": "bench",
                    "backend": backend,
                    "transformer": "smart_meter",
                    "buffer": count + 10,
                    "checkpoint_interval": 3600,
                    "checkpoint_every": 10 * count,
                    "mqtt": {
                        "broker": f"mqtt://127.0.0.1:{port}",
                        "topics": [TOPIC],
                        "qos": 1,
                        "client_id": client_id,
                    },
                }
            ]
        }
    )
    service = OnlineService.from_config(config, state)
    learner = service.learners["bench"]
    first: list[float] = []
    durations: list[float] = []
    done = threading.Event()
    update = learner.update

    def timed(message: Any, source: str = "api") -> dict[str, Any]:
        start = time.perf_counter()
        if not first:
            first.append(start)
        try:
            return update(message, source)
        finally:
            end = time.perf_counter()
            durations.append(end - start)
            if len(durations) == count:
                first.append(end)
                done.set()

    learner.update = timed  # type: ignore[method-assign]
    cpu = time.process_time()
    service.start()
    try:
        if not done.wait(1200):
            raise RuntimeError(f"online service processed {len(durations)} of {count}")
        cpu = time.process_time() - cpu
    finally:
        service.stop()
    rejected = learner.status()["rejected"]
    if rejected:
        raise RuntimeError(f"the bench stream was refused: {rejected}")
    return (count - 1) / (first[1] - first[0]), count / cpu, durations


def direct(backend: str, payloads: list[bytes]) -> float:
    """Messages/s of ``learner.update`` alone (no broker, no threads): the learner's own ceiling."""
    from edge_agent.online.config import LearnerConfig
    from edge_agent.online.learner import OnlineLearner

    learner = OnlineLearner(
        LearnerConfig.model_validate({"name": "direct", "backend": backend, "transformer": "smart_meter"})
    )
    start = time.perf_counter()
    for payload in payloads:
        learner.update(payload, "mqtt")
    return len(payloads) / (time.perf_counter() - start)


def mosquitto_version() -> str:
    out = subprocess.run([MOSQUITTO, "-h"], capture_output=True, text=True, check=False).stdout
    return out.splitlines()[0] if out else "mosquitto"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer messages and rounds")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--messages", type=int, default=None, help="messages per River round")
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else 3)
    messages = args.messages or (3000 if args.quick else 20000)

    raw_rates: dict[str, list[float]] = {b: [] for b in BACKENDS}
    online_rates: dict[str, list[float]] = {b: [] for b in BACKENDS}
    latencies: dict[str, list[float]] = {b: [] for b in BACKENDS}
    direct_rates: dict[str, list[float]] = {b: [] for b in BACKENDS}
    raw_cpu: dict[str, list[float]] = {b: [] for b in BACKENDS}
    online_cpu: dict[str, list[float]] = {b: [] for b in BACKENDS}
    with tempfile.TemporaryDirectory(prefix="fedge-bench-online-") as tmp, sensor_broker(Path(tmp)) as port:
        session = 0
        for round_ in range(rounds):
            for backend in BACKENDS:
                count = max(500, int(messages * SHARE[backend]))
                payloads = [json.dumps(m).encode() for m in meter_stream(count, seed=round_)]
                order = ("raw", "online") if round_ % 2 == 0 else ("online", "raw")
                for side in order:
                    session += 1
                    client_id = f"bench-{session}"
                    register_session(port, client_id)
                    publish_all(port, payloads)
                    if side == "raw":
                        rate, per_cpu = drain_raw(port, client_id, count)
                        raw_rates[backend].append(rate)
                        raw_cpu[backend].append(per_cpu)
                    else:
                        rate, per_cpu, durations = drain_online(
                            port, client_id, backend, count, Path(tmp) / f"state-{session}"
                        )
                        online_rates[backend].append(rate)
                        online_cpu[backend].append(per_cpu)
                        latencies[backend].extend(durations)
                direct_rates[backend].append(direct(backend, payloads))
                print(
                    f"round {round_ + 1}/{rounds} {backend:<8} {count:>6} msgs: "
                    f"raw {raw_rates[backend][-1]:>8.0f}/s  online {online_rates[backend][-1]:>8.0f}/s",
                    flush=True,
                )

    summary: dict[str, Any] = {}
    print(
        f"\n{'backend':<8} {'raw msg/s':>10} {'online msg/s':>13} {'ratio':>6} {'learner msg/s':>14} "
        f"{'cpu ratio':>9} {'p50 ms':>7} {'p99 ms':>7}"
    )
    for backend in BACKENDS:
        raw, online = statistics.median(raw_rates[backend]), statistics.median(online_rates[backend])
        lat = np.asarray(latencies[backend]) * 1000
        row = {
            "raw_msgs_per_s": round(raw),
            "online_msgs_per_s": round(online),
            "ratio": round(online / raw, 3),
            "learner_only_msgs_per_s": round(statistics.median(direct_rates[backend])),
            "raw_msgs_per_cpu_s": round(statistics.median(raw_cpu[backend])),
            "online_msgs_per_cpu_s": round(statistics.median(online_cpu[backend])),
            "cpu_ratio": round(
                statistics.median(online_cpu[backend]) / statistics.median(raw_cpu[backend]), 3
            ),
            "update_p50_ms": round(float(np.percentile(lat, 50)), 4),
            "update_p99_ms": round(float(np.percentile(lat, 99)), 4),
        }
        summary[backend] = row
        print(
            f"{backend:<8} {row['raw_msgs_per_s']:>10} {row['online_msgs_per_s']:>13} {row['ratio']:>6.2f} "
            f"{row['learner_only_msgs_per_s']:>14} {row['cpu_ratio']:>9.2f} {row['update_p50_ms']:>7.3f} "
            f"{row['update_p99_ms']:>7.3f}"
        )
    print(
        json.dumps(
            {
                "bench": "online_ingest",
                "quick": args.quick,
                "rounds": rounds,
                "river_messages": messages,
                "broker": mosquitto_version(),
                "python": platform.python_version(),
                "stream": "smart_meter (36 lags, 96 steps ahead, calendar)",
                "backends": summary,
                "ingest_ratio": summary["river"]["ratio"],
                "ingest_ratio_cpu": summary["river"]["cpu_ratio"],
                "load_average": [round(v, 1) for v in os.getloadavg()],
                "cpus": os.cpu_count(),
                "goal_river_ratio": 0.5,
                "goal_met": summary["river"]["ratio"] >= 0.5,
            }
        )
    )


if __name__ == "__main__":
    main()
