"""Upload throughput: a dataset pushed through the controller (SDK -> API -> S3, SHA-256 + MD5 on the way,
chain record) vs a raw ``minio`` ``put_object`` of the same file, side by side on the same SeaweedFS.

Unlike ``bench/hashing.py`` (client and controller share one process there, as in the tests' LiveServer),
the controller here is its own ``fedge-controller serve`` process, as it is in production, so the client's
Python work does not take the controller's GIL. Both uploads read the same file from a warm page cache;
runs are interleaved (raw, controller, raw, ...) so a noisy neighbour hits both alike. Besides wall time
the CPU seconds per GiB of each process are printed: client (this process), controller, S3 (SeaweedFS).

    .venv/bin/python bench/upload.py [--quick] [--repeat N] [--size-mib M] [--profile DIR]

256 MiB by default, 64 MiB with ``--quick``. The last line of stdout is a JSON summary with the ratio
``controller_mbps / raw_mbps`` (best of the repeats); the goal (issue [scale]) is >= 0.8.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minio import Minio

from bench._services import (
    controller_process,
    process_cpu_seconds,
    run_seaweedfs,
    start_profilers,
    stop_profilers,
)
from controller.client import FedgeClient
from controller.storage.s3 import PART_SIZE

MIB = 1024 * 1024
GIB = 1024 * MIB
GOAL = 0.8


def _make_file(path: Path, size: int) -> None:
    with open(path, "wb") as fh:
        left = size
        while left > 0:
            n = min(16 * MIB, left)
            fh.write(os.urandom(n))
            left -= n


def _clocks(pids: dict[str, int]) -> dict[str, float]:
    return {"client": time.process_time(), **{k: process_cpu_seconds(p) for k, p in pids.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="64 MiB, 2 repeats")
    parser.add_argument(
        "--repeat", type=int, default=None, help="runs per method (default 3; 2 with --quick)"
    )
    parser.add_argument("--size-mib", type=int, default=None)
    parser.add_argument(
        "--profile", type=Path, default=None, help="py-spy of the controller during its uploads, into DIR"
    )
    args = parser.parse_args(argv)
    size = (args.size_mib or (64 if args.quick else 256)) * MIB
    repeat = args.repeat or (2 if args.quick else 3)

    with tempfile.TemporaryDirectory(prefix="fedge-bench-upload-") as tmp_s:
        tmp = Path(tmp_s)
        src = tmp / "dataset.bin"
        _make_file(src, size)
        (tmp / "s3").mkdir()
        with run_seaweedfs(tmp / "s3") as s3:
            info = s3.server
            token = f"fedge_bench-{secrets.token_hex(16)}"
            env = {
                "FEDGE_STORAGE_BACKEND": "s3",
                "FEDGE_S3_ENDPOINT": info.endpoint,
                "FEDGE_S3_ACCESS_KEY": info.access_key,
                "FEDGE_S3_SECRET_KEY": info.secret_key,
                "FEDGE_S3_SECURE": "false",
                "FEDGE_BUCKET_PREFIX": "bench-",
            }
            raw = Minio(info.endpoint, access_key=info.access_key, secret_key=info.secret_key, secure=False)
            raw.make_bucket("bench-raw")
            with controller_process(tmp / "controller", token, env) as (url, ctl_pid):
                pids = {"controller": ctl_pid, "s3": s3.pid}
                fc = FedgeClient(url, token, timeout=600)
                meta = {"organization_id": "org-bench", "samples_dimension": "(1,8,8)"}
                small = tmp / "small.bin"
                small.write_bytes(os.urandom(1024))
                fc.push_dataset(small, meta)  # warm-up: connections, lazy imports, buckets
                with open(small, "rb") as fh:
                    raw.put_object("bench-raw", "warm", fh, length=1024, part_size=PART_SIZE)
                with open(src, "rb") as fh:  # warm page cache
                    while fh.read(16 * MIB):
                        pass
                runs: dict[str, list[tuple[float, dict[str, float]]]] = {"raw": [], "controller": []}
                for i in range(repeat):
                    for method in ("raw", "controller"):
                        c0, t0 = _clocks(pids), time.perf_counter()
                        if method == "raw":
                            with open(src, "rb") as fh:
                                raw.put_object("bench-raw", f"obj-{i}", fh, length=size, part_size=PART_SIZE)
                        else:
                            spies = start_profilers(args.profile, {"controller": ctl_pid})
                            created = fc.push_dataset(src, meta)
                            stop_profilers(spies)
                            if created.size_bytes != size:
                                raise RuntimeError(f"controller stored {created} for {size} bytes")
                        wall = time.perf_counter() - t0
                        c1 = _clocks(pids)
                        runs[method].append((wall, {k: c1[k] - c0[k] for k in c0}))
                fc.close()

    def best(method: str) -> float:
        return size / min(w for w, _ in runs[method]) / 1e6

    def cpu(method: str) -> dict[str, float]:
        keys = runs[method][0][1]
        return {k: round(statistics.median(c[k] for _, c in runs[method]) * GIB / size, 2) for k in keys}

    ratio = best("controller") / best("raw")
    print(f"upload of {size // MIB} MiB to SeaweedFS, {repeat} runs each, interleaved (best MB/s; CPU s/GiB)")
    for method, label in (("raw", "raw minio put_object"), ("controller", "controller push_dataset")):
        walls = " ".join(f"{w:.2f}" for w, _ in runs[method])
        print(f"  {label:<26} {best(method):8.1f} MB/s  cpu {cpu(method)}  [{walls} s]")
    print(f"  ratio controller / raw: {ratio:.2f}x (goal >= {GOAL})")
    summary: dict[str, Any] = {
        "bench": "upload",
        "size_mib": size // MIB,
        "raw_mbps": round(best("raw"), 1),
        "controller_mbps": round(best("controller"), 1),
        "ratio": round(ratio, 3),
        "cpu_s_per_gib": {"raw": cpu("raw"), "controller": cpu("controller")},
        "goal_ratio": GOAL,
        "goal_met": ratio >= GOAL,
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
