"""``bench/grid.py`` keeps its contract: a last JSON line with ``speedup`` and ``exact``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_bench_reports_speedup_and_exactness() -> None:
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "grid.py"), "--steps", "60", "--naive-steps", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )

    assert run.returncode == 0, run.stdout + run.stderr
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["exact"] is True
    assert summary["incremental_equals_full_bitwise"] is True
    assert summary["max_abs_reward_diff"] <= 1e-9
    assert summary["speedup"] >= 50
