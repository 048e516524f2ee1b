"""``python -m simulator.fleet --controller URL --token ADMIN --agents N [--deploy MODEL_ID ...]``.

Enrolls (or, with a kept ``--state-root``, reuses) N simulated agents, runs their loops, optionally starts a
deployment to them and waits for it, prints one JSON line per event of interest, and keeps running for
``--duration`` seconds (0: until interrupted; with ``--deploy``: stop once the rollout ended).

``--stream`` (a worker of a fleet spread over several processes, ``bench/rollout.py``): once the agents
run (and, with ``--mqtt``, are connected to the broker) it prints ``{"event": "ready", "device_ids": [...]}``,
then one ``{"event": "outcome", ...}`` line per apply outcome as it happens, until its stdin closes or it
is terminated; then ``{"event": "stopped", "errors", "rss_mb"}``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from simulator.fleet.core import Event, Fleet, SimAgent

_out = threading.Lock()


def _labels(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"label '{pair}' is not k=v")
        out[key] = value
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m simulator.fleet", description=__doc__.splitlines()[0])
    p.add_argument("--controller", required=True, help="controller URL")
    p.add_argument("--token", default=os.environ.get("FEDGE_TOKEN"), help="admin API token (or FEDGE_TOKEN)")
    p.add_argument("--agents", type=int, default=10, help="number of simulated devices")
    p.add_argument("--state-root", type=Path, help="state dirs (agent-NNNN); default: a temp dir")
    p.add_argument("--poll-interval", type=float, default=1.0, help="seconds between desired-state polls")
    p.add_argument("--label", action="append", default=[], help="k=v on every device (repeatable)")
    p.add_argument("--api", action="store_true", help="serve each agent's local inference API")
    p.add_argument("--deploy", metavar="MODEL_ID", help="deploy this model to the simulated devices")
    p.add_argument("--version", type=int, help="model version to deploy (default: newest ONNX)")
    p.add_argument("--waves", help="cumulative fractions, e.g. 0.1,1.0 (default: all at once)")
    p.add_argument("--timeout", type=float, default=600.0, help="longest wait for the rollout")
    p.add_argument("--duration", type=float, default=0.0, help="seconds to run (0: until interrupted)")
    p.add_argument("--mqtt", action="store_true", help="agents use the broker: push, reports via outbox")
    p.add_argument("--ramp", type=float, default=0.0, help="spread the agents' starts over this many s")
    p.add_argument("--enroll-workers", type=int, default=1, help="enrollments in parallel")
    p.add_argument("--stream", action="store_true", help="print ready and outcome events as they happen")
    args = p.parse_args(argv)
    if not args.token:
        p.error("--token (or FEDGE_TOKEN) is required")
    if args.agents < 1:
        p.error("--agents must be >= 1")
    return args


def _emit(**fields: object) -> None:
    line = json.dumps(fields)
    with _out:  # whole lines, also from the agents' threads
        print(line, flush=True)


def _outcome(sim: SimAgent, event: Event) -> None:
    _emit(
        event="outcome",
        device_id=sim.device_id,
        deployment_id=event.deployment_id,
        state=event.state,
        at=event.at,
        model_id=event.model_id,
        version=event.version,
    )


def stream(fleet: Fleet, args: argparse.Namespace) -> int:
    """The worker mode (``--stream``): ready, outcomes as they happen, stopped (see the module doc)."""
    t0 = time.monotonic()
    fleet.ensure(args.agents, workers=args.enroll_workers)
    enrolled = time.monotonic() - t0
    fleet.start(ramp=args.ramp)
    try:
        fleet.wait_connected(timeout=120)
    except TimeoutError as exc:
        logging.getLogger("fedge.simulator.fleet").warning("%s", exc)
    _emit(
        event="ready",
        device_ids=fleet.device_ids,
        enroll_s=round(enrolled, 3),
        connected=sum(1 for sim in fleet.agents if sim.connected),
        pid=os.getpid(),
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def until_stdin_closes() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=until_stdin_closes, daemon=True).start()
    while not stop.is_set():
        stop.wait(1.0)
    fleet.stop()
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    _emit(event="stopped", errors=sum(sim.errors for sim in fleet.agents), rss_mb=round(rss_mb, 1))
    return 0


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="fedge-fleet-") as tmp:
        root = args.state_root or Path(tmp)
        fleet = Fleet(
            args.controller,
            args.token,
            root,
            poll_interval=args.poll_interval,
            serve_api=args.api,
            labels=_labels(args.label),
            mqtt=args.mqtt,
            on_event=_outcome if args.stream else None,
        )
        if args.stream:
            with fleet:
                return stream(fleet, args)
        with fleet:
            t0 = time.monotonic()
            fleet.ensure(args.agents, workers=args.enroll_workers)
            _emit(event="enrolled", agents=len(fleet.agents), seconds=round(time.monotonic() - t0, 3))
            fleet.start(ramp=args.ramp)
            stop = threading.Event()
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            signal.signal(signal.SIGINT, lambda *_: stop.set())
            status = 0
            if args.deploy:
                waves = [float(w) for w in args.waves.split(",")] if args.waves else None
                started = time.time()
                dep_id = fleet.deploy(args.deploy, args.version, waves=waves)
                dep = fleet.wait_deployment(dep_id, args.timeout)
                done = [t - started for t in fleet.convergence(dep_id).values() if t is not None]
                _emit(
                    event="deployment",
                    deployment_id=dep_id,
                    state=dep.state,
                    succeeded=len(done),
                    agents=len(fleet.agents),
                    max_seconds=round(max(done), 3) if done else None,
                )
                status = 0 if dep.state == "succeeded" else 1
                if not args.duration:
                    stop.set()
            if args.duration:
                stop.wait(args.duration)
            else:
                while not stop.is_set():
                    stop.wait(1.0)
            for sim in fleet.agents:
                _emit(
                    event="agent",
                    index=sim.index,
                    device_id=sim.device_id,
                    active=list(sim.active) if sim.active else None,
                    api=sim.api_url,
                    errors=sim.errors,
                )
    return status


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(run(parse_args(argv)))


if __name__ == "__main__":
    main()
