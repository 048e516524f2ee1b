"""``python -m simulator.fleet --controller URL --token ADMIN --agents N [--deploy MODEL_ID ...]``.

Enrolls (or, with a kept ``--state-root``, reuses) N simulated agents, runs their loops, optionally starts a
deployment to them and waits for it, prints one JSON line per event of interest, and keeps running for
``--duration`` seconds (0: until interrupted; with ``--deploy``: stop once the rollout ended).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from simulator.fleet.core import Fleet


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
    args = p.parse_args(argv)
    if not args.token:
        p.error("--token (or FEDGE_TOKEN) is required")
    if args.agents < 1:
        p.error("--agents must be >= 1")
    return args


def _emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


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
        )
        with fleet:
            t0 = time.monotonic()
            fleet.ensure(args.agents)
            _emit(event="enrolled", agents=len(fleet.agents), seconds=round(time.monotonic() - t0, 3))
            fleet.start()
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
