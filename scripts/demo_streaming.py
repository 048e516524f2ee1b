"""The streaming part of ``make demo`` (called by ``scripts/demo.py``; also ``python scripts/demo_streaming.py
URL TOKEN DATA_DIR`` against a running controller).

A simulated smart meter publishes readings shaped by a real SimBench household load profile (``H0-A``:
its mean daily shape over the year, 15-minute readings, relative load, 10 % Gaussian noise) over MQTT to a
site broker (amqtt on loopback, anonymous: the plant's broker of the seed's Table 2, not the fleet broker,
whose ACL keeps sensors out). An enrolled edge agent's online learner (River linear regression behind the
``smart_meter`` transformer: 36 lags, 24 h ahead) forecasts every reading and learns from it when its label
arrives (prequential). After a warm-up week the agent's monitor watches the learner's inputs in windows of
96 (one day) against the warm-up's last 3 days (Evidently); after ``DAYS_BEFORE`` days the level rises by
20 %, the monitor raises a drift alarm and the agent's outbox delivers it to the controller, which lists it
at ``GET /v1/devices/{id}/events``. Printed: MAPE before and after the shift (and seasonal naive), alarms
before the shift (false alarms) and the windows it took to detect; saved: a PNG of the stream, the
forecasts and the alarm under ``DATA_DIR/streaming/``.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

console = Console()

PROFILE = "H0-A"
SLOTS = 96
START_DAY = 120  # May: a stretch of the year without holidays
WARM_UP_DAYS = 7  # the learner learns before the monitor watches; the reference: its last days
REFERENCE_DAYS = 3
DAYS_BEFORE = 21  # unshifted days (warm-up included)
LAGS = 36  # the smart_meter transformer's default: features = 36 lags, then 4 calendar terms
MODEL = "online/meter-w4"  # the monitor's name for the learner (as MonitorService.watch_learner)
DAYS_AFTER = 4
SHIFT = 0.20
NOISE = 0.10
TOPIC = "site/meters/meter-1/W4"
START = int(datetime(2016, 1, 1, tzinfo=UTC).timestamp())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class SiteBroker:
    """amqtt on 127.0.0.1 (anonymous): the site's sensor broker, in its own thread and event loop."""

    def __init__(self) -> None:
        self.port = free_port()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._broker: Any = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> SiteBroker:
        from amqtt.broker import Broker  # type: ignore[import-untyped]

        started = threading.Event()
        errors: list[BaseException] = []
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                self._broker = Broker(config, loop=loop)
                loop.run_until_complete(self._broker.start())
            except BaseException as exc:
                errors.append(exc)
                started.set()
                return
            started.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True, name="site-broker")
        self._thread.start()
        started.wait(30)
        if errors:
            raise RuntimeError(f"site broker did not start: {errors[0]}") from errors[0]
        return self

    def __exit__(self, *exc: object) -> None:
        loop, broker = self._loop, self._broker
        if loop is not None and broker is not None and loop.is_running():
            asyncio.run_coroutine_threadsafe(broker.shutdown(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)


def meter_readings(seed: int = 0) -> tuple[list[dict[str, Any]], int]:
    """Meter readings shaped by the SimBench profile: its mean daily shape (15-minute slots, averaged over
    the year) with 10 % Gaussian noise, stationary by construction (the raw profile's own weekly and
    seasonal change would raise alarms of its own: ``bench/online_drift.py`` reports both); the last
    ``DAYS_AFTER`` days +20 %. Returns the readings and the index of the first shifted one."""
    from simulator.grid.data import load_profiles

    p, _ = load_profiles([PROFILE])[PROFILE]
    shape = np.asarray(p, dtype=np.float64).mean(axis=0)
    rng = np.random.default_rng(seed)
    days = DAYS_BEFORE + DAYS_AFTER
    series = np.tile(shape, days) * (1 + NOISE * rng.standard_normal(days * SLOTS))
    shift_at = DAYS_BEFORE * SLOTS
    series[shift_at:] *= 1 + SHIFT
    t0 = START + START_DAY * 86_400
    readings = [
        {
            "timestamp": datetime.fromtimestamp(t0 + i * 900, UTC).isoformat(),
            "consumption": round(float(v), 6),
        }
        for i, v in enumerate(series)
    ]
    return readings, shift_at


def _publish(meter: Any, readings: list[dict[str, Any]]) -> None:
    for r in readings:
        meter.publish(TOPIC, json.dumps(r).encode(), qos=1).wait_for_publish(10)


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"streaming demo: timed out waiting for {what}")
        time.sleep(0.05)


def _mape(pairs: list[tuple[float, float]]) -> float:
    y = np.array([a for a, _ in pairs])
    p = np.array([b for _, b in pairs])
    keep = np.abs(y) > 1e-9
    return float(np.mean(np.abs((y[keep] - p[keep]) / y[keep])) * 100)


def plot(path: Path, readings: list[dict[str, Any]], seen: list[tuple[int, float, float]], shift_at: int,
         alarm_at: int | None) -> None:  # fmt: skip
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y = [r["consumption"] for r in readings]
    fig, ax = plt.subplots(figsize=(11, 3.6))
    ax.plot(range(len(y)), y, lw=0.8, color="0.4", label=f"meter (SimBench {PROFILE} daily shape + noise)")
    ax.plot([i for i, _, _ in seen], [p for _, _, p in seen], lw=0.8, color="tab:blue",
            label="online forecast (24 h ahead)")  # fmt: skip
    ax.axvline(shift_at, color="tab:orange", ls="--", label=f"level +{SHIFT:.0%}")
    if alarm_at is not None:
        ax.axvline(alarm_at, color="tab:red", label="drift alarm")
    ax.set_xlabel("reading (15 min)")
    ax.set_ylabel("relative load")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def streaming(url: str, token: str, data_dir: Path) -> dict[str, Any]:
    """Run the streaming demo against the controller at ``url``; returns the numbers it printed."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from controller.client import FedgeClient
    from edge_agent.deploy.agent import Agent
    from edge_agent.identity import enroll
    from edge_agent.link.client import ControllerLink
    from edge_agent.link.outbox import Outbox
    from edge_agent.monitor.service import MonitorConfig, MonitorService
    from edge_agent.online.config import OnlineConfig
    from edge_agent.online.service import OnlineService

    console.rule("streaming: a smart meter, online forecasting, drift to the controller")
    began = time.monotonic()
    out_dir = data_dir / "streaming"
    out_dir.mkdir(parents=True, exist_ok=True)
    readings, shift_at = meter_readings()
    with FedgeClient(url, token) as fc:
        enrollment = fc.enrollment_token(labels={"role": "meter-gateway"}, ttl_seconds=600)
    state_dir = Path(tempfile.mkdtemp(prefix="meter-gateway-", dir=out_dir))
    identity = enroll(url, enrollment.token, state_dir, facts={"cpu_count": 1})
    link = ControllerLink(identity)
    agent = Agent(state_dir, link)
    agent.outbox = Outbox.in_state_dir(state_dir)
    console.print(f"edge agent {identity.device_id} enrolled (telemetry over its outbox)")

    with SiteBroker() as broker:
        config = OnlineConfig.model_validate(
            {
                "learners": [
                    {
                        "name": "meter-w4",
                        "backend": "river",
                        "model": "linear",
                        "transformer": "smart_meter",
                        "mqtt": {"broker": f"mqtt://127.0.0.1:{broker.port}", "topics": ["site/meters/+/W4"]},
                    }
                ]
            }
        )
        service = OnlineService.from_config(config, state_dir / "online")
        learner = service.learners["meter-w4"]
        seen: list[tuple[int, float, float]] = []  # (index of the labelled reading, y, forecast)
        learner.observers.append(lambda y, p, _x: seen.append((len(seen), float(y), float(p))))
        monitor = MonitorService(
            state_dir,
            record=agent.record_telemetry,
            # inputs against the warm-up reference (Evidently); not the error stream: an online learner's
            # errors move while it learns, and ADWIN / Page-Hinkley fired on the unshifted stream in trials
            config=MonitorConfig(detectors=()),
            refresh_seconds=0.1,
            summary_seconds=3600,
            isolate=False,
        )
        xs: list[list[float]] = []  # the learner's features of each forecast (for the reference)
        watching = threading.Event()

        def observe(y: Any, p: Any, x: Any) -> None:
            lags = [float(v) for v in (x.values() if isinstance(x, dict) else np.ravel(x))][:LAGS]
            vec = [lags[-1], lags[0]]  # the newest reading and the one 9 h before it
            xs.append(vec)
            if watching.is_set():
                monitor.observer.on_prediction(y, p, vec, model_id=MODEL, version=0)

        learner.observers.append(observe)
        monitor.start()
        service.start()
        first_watched = 0
        try:
            _wait(service.feeds[0].connected.is_set, 20, "the learner's connection to the site broker")
            meter = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="meter-1", protocol=mqtt.MQTTv311)
            meter.connect("127.0.0.1", broker.port)
            meter.loop_start()
            try:
                warm = WARM_UP_DAYS * SLOTS
                _publish(meter, readings[:warm])
                _wait(lambda: learner.messages >= warm, 60, "the warm-up consumed")
                # the reference: the inputs of the warm-up's last days (what the learner was fit on)
                reference = pd.DataFrame(xs[-REFERENCE_DAYS * SLOTS :])
                reference.columns = ["load", "load_9h_before"]
                monitor.monitor.set_reference(MODEL, 0, reference, f"warm-up ({REFERENCE_DAYS} days)")
                first_watched = len(seen)
                watching.set()
                _publish(meter, readings[warm:])
            finally:
                meter.disconnect()
                meter.loop_stop()
            _wait(lambda: learner.messages >= len(readings), 60, "the stream consumed")
            watch = monitor.monitor.watch(MODEL, 0)
            _wait(
                lambda: watch.labelled >= len(seen) - first_watched, 60, "the monitor to see every forecast"
            )
        finally:
            service.stop()
            monitor.stop()
        agent.flush()

    # the label of reading i reaches the learner horizon (96) readings later: seen[k] is reading k+36+96-1
    lag = len(readings) - len(seen)
    indexed = [(k + lag, y, p) for k, y, p in seen]
    start_obs = lag + first_watched  # the first reading whose forecast the monitor saw
    before = [(y, p) for i, y, p in indexed if start_obs <= i < shift_at]
    after = [(y, p) for i, y, p in indexed if i >= shift_at]
    ys = [float(r["consumption"]) for r in readings]
    naive = [(ys[i], ys[i - SLOTS]) for i, _, _ in indexed if start_obs <= i < shift_at]  # a day before
    alarms = [e for e in monitor.monitor.events if e.get("model_id") == MODEL]
    with FedgeClient(url, token) as fc:
        _wait(
            lambda: fc.device_events(identity.device_id).total >= len(alarms),
            20,
            "the events at the controller",
        )
        events = fc.device_events(identity.device_id)
    # an alarm names its window (96 monitored forecasts each, data drift and error windows alike)
    alarm_windows = [int(e.get("window", 0)) for e in alarms]
    shift_window = (shift_at - start_obs) // SLOTS  # the window the first shifted forecast falls in
    false_alarms = sum(1 for w in alarm_windows if w < shift_window)
    detecting = [w for w in alarm_windows if w >= shift_window]
    windows_to_detect = detecting[0] - shift_window + 1 if detecting else None
    alarm_at = start_obs + detecting[0] * SLOTS if detecting else None
    png = out_dir / "streaming.png"
    plot(png, readings, indexed, shift_at, alarm_at)
    result = {
        "readings": len(readings),
        "mape_before_pct": round(_mape(before), 2),
        "mape_after_pct": round(_mape(after), 2),
        "mape_seasonal_naive_before_pct": round(_mape(naive), 2),
        "false_alarms": false_alarms,
        "windows_to_detect": windows_to_detect,
        "alarms_at_controller": events.total,
        "detectors": sorted({str(e.get("detector")) for e in alarms}),
        "shift_window": shift_window,
        "alarm_windows": alarm_windows,
        "seconds": round(time.monotonic() - began, 1),
        "plot": str(png),
    }
    console.print(
        f"{len(readings)} readings over MQTT ({DAYS_BEFORE} days, then {DAYS_AFTER} days +{SHIFT:.0%}); "
        f"forecast MAPE before the shift [bold]{result['mape_before_pct']:.1f} %[/bold], after "
        f"[bold]{result['mape_after_pct']:.1f} %[/bold] (seasonal naive before: "
        f"{result['mape_seasonal_naive_before_pct']:.1f} %)"
    )
    console.print(
        f"drift alarms: {false_alarms} in {shift_window} monitored days before the shift, first after it "
        f"in window "
        f"[bold]{windows_to_detect}[/bold] (1 = the first shifted day), detectors {result['detectors']}"
    )
    for ev in events.items[:3]:
        console.print(
            f"  controller GET /v1/devices/{identity.device_id[:8]}.../events: {ev.type} {ev.detector} "
            f"model {ev.model_id} window {ev.body.get('window')} at {ev.occurred_at}",
            highlight=False,
        )
    console.print(f"plot: {png}")
    return result


if __name__ == "__main__":
    numbers = streaming(sys.argv[1], sys.argv[2], Path(sys.argv[3]))
    print(json.dumps(numbers))
