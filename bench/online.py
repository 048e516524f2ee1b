"""Online learning on the agent, all in one: forecasting quality (UC10 GRU vs seasonal-naive, transfer
learning), stream ingest speed (transformer + predict + update vs the raw paho rate on the same broker) and
drift detection (false alarms on an unshifted stream, windows to detect a 20 % level shift).

Runs the three benchmarks side by side in this run, each in its own process (so torch threads, brokers and
imports do not disturb one another), prints their tables and ends with one JSON line that carries the
interface keys ``mape_gain_vs_seasonal_naive``, ``ingest_ratio``, ``transfer`` and ``drift``, plus each
part's full summary.

    python bench/online.py [--quick]

The parts run alone too: ``bench/online_learning.py``, ``bench/online_ingest.py``, ``bench/online_drift.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PARTS = ("online_learning", "online_ingest", "online_drift")


def run_part(name: str, quick: bool) -> tuple[dict[str, Any], float]:
    """Run ``bench/<name>.py``, echo its output, return its final JSON line and wall seconds."""
    cmd = [sys.executable, str(HERE / f"{name}.py"), *(["--quick"] if quick else [])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    began = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - began
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    for line in lines[:-1]:
        print(f"  {line}")
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"bench/{name}.py failed (exit {proc.returncode})")
    return json.loads(lines[-1]), seconds


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="each part's quick mode")
    args = parser.parse_args()
    results: dict[str, dict[str, Any]] = {}
    seconds: dict[str, float] = {}
    for name in PARTS:
        print(f"== bench/{name}.py{' --quick' if args.quick else ''}")
        results[name], seconds[name] = run_part(name, args.quick)
    learning, ingest, drift = (results[n] for n in PARTS)
    summary = {
        "bench": "online",
        "quick": args.quick,
        "mape_gain_vs_seasonal_naive": learning["mape_gain_vs_seasonal_naive"],
        "ingest_ratio": ingest["ingest_ratio"],
        "transfer": learning["transfer"],
        "drift": drift["drift"],
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "parts": results,
    }
    print(
        f"online: MAPE gain vs seasonal-naive {summary['mape_gain_vs_seasonal_naive']:+.1%}, "
        f"ingest {summary['ingest_ratio']:.2f}x raw paho, transfer epochs ratio "
        f"{learning['transfer'].get('epochs_ratio')}, drift {drift['drift']}"
    )
    print(json.dumps(summary, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
