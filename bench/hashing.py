"""Hashing and transfer throughput of the product paths, side by side with reference tools, in one run.

1. Streamed SHA-256 of a file (1 GiB; 256 MiB with ``--quick``) through ``hash_file`` (the
   ``HashingReader`` uploads use; it computes SHA-256 *and* MD5), through the same reader with MD5
   switched off, and through stdlib ``hashlib.file_digest``, against the ``sha256sum`` command.
2. Upload and download of an N-byte object (256 MiB; 64 MiB with ``--quick``) to SeaweedFS (``weed
   mini``): raw ``minio`` SDK ``put_object``/``get_object`` vs the controller (``storage_backend="s3"``
   on the same server, uvicorn in a background thread) through ``FedgeClient.push_dataset`` /
   ``download_dataset`` (which hash and verify). The controller's first download of an object hashes it
   in full against the chain before the first byte, then streams it (two reads); a repeated download of
   the unchanged object streams it once (still hashed on the way). Also the controller download's time
   to first byte (response headers) and the fixed cost of a 1 KiB push/download.

Each figure is measured several times, interleaved across methods (best and median reported), from a
warm page cache. MB/s means 10^6 bytes per second. Besides wall time, CPU time per GiB moved is shown
(robust on a shared machine): "py" = this Python process plus its child commands (for the controller
rows that is client *and* controller, which run in this process as in the tests' LiveServer, sharing
one GIL), "S3" = the SeaweedFS process. The last line of stdout is a JSON summary.

    .venv/bin/python bench/hashing.py [--quick] [--repeat N] [--skip-transfer]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

if __package__ in (None, ""):  # run as a script: make the repository root importable (bench, tests)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minio import Minio

from bench._services import RunningS3, live_controller, run_seaweedfs
from controller.client import FedgeClient
from controller.config import ControllerSettings
from controller.registry.hashing import HashingReader, hash_file
from controller.state import build_state
from controller.storage.base import CHUNK_SIZE
from controller.storage.s3 import PART_SIZE

T = TypeVar("T")
MIB = 1024 * 1024
GIB = 1024 * MIB
BLOCK = 16 * MIB


def _own_cpu() -> float:
    """CPU seconds of this process (all threads) plus its reaped children (e.g. sha256sum)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


@dataclass
class Timing:
    """Repeated wall-clock (and CPU) timings of one method moving ``nbytes``."""

    label: str
    nbytes: int
    other_cpu: Callable[[], float] | None = None  # e.g. the S3 server's CPU clock
    seconds: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    other: list[float] = field(default_factory=list)

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        other0 = self.other_cpu() if self.other_cpu else 0.0
        cpu0, t0 = _own_cpu(), time.perf_counter()
        result = fn(*args)
        self.seconds.append(time.perf_counter() - t0)
        self.cpu.append(_own_cpu() - cpu0)
        if self.other_cpu:
            self.other.append(self.other_cpu() - other0)
        return result

    @property
    def best_mbps(self) -> float:
        return self.nbytes / min(self.seconds) / 1e6

    @property
    def median_mbps(self) -> float:
        return self.nbytes / statistics.median(self.seconds) / 1e6

    def cpu_per_gib(self, samples: list[float]) -> float:
        return statistics.median(samples) * GIB / self.nbytes


def _header(title: str, ratio_of: str, other: bool = False) -> str:
    cols = f"{'best MB/s':>9} {'med MB/s':>9} {'ratio':>7}  {'py CPU':>6}"
    cols += f" {'S3 CPU':>6}" if other else ""
    return (
        f"\n{title}\n  ratio = best throughput / {ratio_of}; CPU = median CPU seconds per GiB\n"
        f"  {'method':<46} {cols}   [wall seconds per run]"
    )


def _row(t: Timing, ref: Timing) -> str:
    ratio = "ref" if t is ref else f"{t.best_mbps / ref.best_mbps:.2f}x"
    line = f"  {t.label:<46} {t.best_mbps:9.1f} {t.median_mbps:9.1f} {ratio:>7}  {t.cpu_per_gib(t.cpu):6.2f}"
    if t.other_cpu:
        line += f" {t.cpu_per_gib(t.other):6.2f}"
    return line + "   [" + " ".join(f"{s:.2f}" for s in t.seconds) + "]"


def _make_file(path: Path, size: int) -> None:
    """Random-ish contents: fresh os.urandom per 16 MiB block (hash speed does not depend on data)."""
    with open(path, "wb") as fh:
        left = size
        while left > 0:
            n = min(BLOCK, left)
            fh.write(os.urandom(n))
            left -= n


def _read_all(path: Path) -> None:
    """Read the file once so every method starts from a warm page cache."""
    with open(path, "rb") as fh:
        while fh.read(BLOCK):
            pass


class _NoHash:
    """Stands in for a HashingReader's MD5 object, to time its SHA-256 alone (product code untouched)."""

    def update(self, data: bytes, /) -> None:
        pass

    def hexdigest(self) -> str:
        return ""


def _sha256_only_reader(path: Path) -> str:
    with open(path, "rb") as fh:
        reader = HashingReader(fh)
        reader._md5 = _NoHash()  # type: ignore[assignment]
        while reader.read(CHUNK_SIZE):
            pass
        return reader.digests().sha256


def _file_digest(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _sha256sum(path: Path) -> str:
    out = subprocess.run(["sha256sum", str(path)], capture_output=True, text=True, check=True).stdout
    return out.split()[0]


# --------------------------------------------------------------------------------------------- hashing


def bench_hash(tmp: Path, size: int, repeat: int) -> dict[str, Any]:
    if shutil.which("sha256sum") is None:
        raise RuntimeError("the sha256sum command is not installed")
    path = tmp / "hash-input.bin"
    t0 = time.perf_counter()
    _make_file(path, size)
    print(f"generated {size // MIB} MiB in {time.perf_counter() - t0:.1f}s; warming the page cache")
    _read_all(path)

    ours = Timing("hash_file (HashingReader: SHA-256 + MD5)", size)
    sha_only = Timing("HashingReader with MD5 off (SHA-256 only)", size)
    stdlib = Timing("hashlib.file_digest sha256 (stdlib)", size)
    tool = Timing("sha256sum command", size)
    results: dict[str, set[str]] = {"ours": set(), "sha_only": set(), "stdlib": set(), "tool": set()}
    for _ in range(repeat):  # interleaved, so a noisy neighbour hits every method alike
        results["ours"].add(ours.run(hash_file, path).sha256)
        results["sha_only"].add(sha_only.run(_sha256_only_reader, path))
        results["stdlib"].add(stdlib.run(_file_digest, path))
        results["tool"].add(tool.run(_sha256sum, path))
    hashes = set().union(*results.values())
    if len(hashes) != 1:
        raise RuntimeError(f"methods disagree on the SHA-256: {results}")
    path.unlink()

    print(_header(f"SHA-256 of a {size // MIB} MiB file (page cache warm)", "sha256sum"))
    for t in (ours, sha_only, stdlib, tool):
        print(_row(t, tool))
    print(f"  all methods agree: sha256 {hashes.pop()[:16]}...")
    return {
        "file_mib": size // MIB,
        "sha256_ours_mbps": round(ours.best_mbps, 1),
        "sha256sum_mbps": round(tool.best_mbps, 1),
        "hash_ratio": round(ours.best_mbps / tool.best_mbps, 3),
        "sha256_ours_median_mbps": round(ours.median_mbps, 1),
        "sha256sum_median_mbps": round(tool.median_mbps, 1),
        "sha256_only_mbps": round(sha_only.best_mbps, 1),
        "sha256_only_ratio": round(sha_only.best_mbps / tool.best_mbps, 3),
        "sha256_stdlib_mbps": round(stdlib.best_mbps, 1),
        "sha256_ours_cpu_s_per_gib": round(ours.cpu_per_gib(ours.cpu), 3),
        "sha256_only_cpu_s_per_gib": round(sha_only.cpu_per_gib(sha_only.cpu), 3),
        "sha256sum_cpu_s_per_gib": round(tool.cpu_per_gib(tool.cpu), 3),
    }


# -------------------------------------------------------------------------------------------- transfer


def _raw_put(client: Minio, bucket: str, key: str, path: Path, size: int) -> None:
    with open(path, "rb") as fh:  # the part size (and parallelism) the controller's S3 store uses
        client.put_object(bucket, key, fh, length=size, part_size=PART_SIZE)


def _raw_get(client: Minio, bucket: str, key: str, dest: Path) -> int:
    resp = client.get_object(bucket, key)
    n = 0
    try:
        with open(dest, "wb") as fh:
            for chunk in resp.stream(CHUNK_SIZE):
                fh.write(chunk)
                n += len(chunk)
    finally:
        resp.close()
        resp.release_conn()
    return n


def _first_byte(fc: FedgeClient, dataset_id: str) -> None:
    """GET the dataset and stop once the response headers are in (time to first byte)."""
    with fc.http.stream("GET", f"/v1/datasets/{dataset_id}") as resp:
        fc._raise(resp)


def bench_transfer(tmp: Path, size: int, repeat: int) -> dict[str, Any]:
    src, small = tmp / "object.bin", tmp / "small.bin"
    _make_file(src, size)
    _read_all(src)
    expected = _file_digest(src)
    small.write_bytes(os.urandom(1024))
    (tmp / "s3").mkdir()
    with run_seaweedfs(tmp / "s3") as s3:
        print(f"SeaweedFS S3 at {s3.server.url} (pid {s3.pid})", flush=True)
        return _transfer_against(tmp, s3, src, small, size, expected, repeat)


def _transfer_against(
    tmp: Path, s3: RunningS3, src: Path, small: Path, size: int, expected: str, repeat: int
) -> dict[str, Any]:
    info, dest = s3.server, tmp / "download.bin"
    raw = Minio(info.endpoint, access_key=info.access_key, secret_key=info.secret_key, secure=False)
    bucket = "bench-raw"
    raw.make_bucket(bucket)

    admin = f"fedge_bench-{secrets.token_hex(16)}"
    settings = ControllerSettings(
        data_dir=tmp / "controller",
        admin_token=admin,
        **info.controller_settings(),
        _env_file=None,
    )
    state = build_state(settings)
    meta = {"organization_id": "org-bench", "samples_dimension": "(1,8,8)"}
    s3_cpu = s3.cpu_seconds
    up_raw = Timing("raw minio put_object (16 MiB parts)", size, s3_cpu)
    up_ctl = Timing("controller FedgeClient.push_dataset", size, s3_cpu)
    down_raw = Timing("raw minio get_object -> file", size, s3_cpu)
    down_ctl = Timing("controller download_dataset -> file (verified)", size, s3_cpu)
    down_again = Timing("controller download again (verified before, unchanged)", size, s3_cpu)
    ttfb = Timing("controller download: time to first byte", size, s3_cpu)
    small_up, small_down = Timing("1 KiB push", 1024), Timing("1 KiB download", 1024)
    try:
        with live_controller(state) as url, FedgeClient(url, token=admin) as fc:
            print(f"controller at {url}", flush=True)
            warm = fc.push_dataset(small, meta)  # warm-up: connections, lazy imports, bucket lookups
            fc.download_dataset(warm.dataset_id, tmp / "warm.bin")
            _raw_put(raw, bucket, "warm", small, small.stat().st_size)
            for i in range(repeat):  # interleaved, so a noisy neighbour hits every method alike
                key = f"obj-{i}"
                up_raw.run(_raw_put, raw, bucket, key, src, size)
                created = up_ctl.run(fc.push_dataset, src, meta)
                if created.sha256 != expected:
                    raise RuntimeError("the controller reported another SHA-256 than the source file's")
                got = down_raw.run(_raw_get, raw, bucket, key, dest)
                if got != size:
                    raise RuntimeError(f"raw download returned {got} bytes, expected {size}")
                dest.unlink()
                if down_ctl.run(fc.download_dataset, created.dataset_id, dest) != expected:
                    raise RuntimeError("the controller's download has another SHA-256")
                dest.unlink()
                if down_again.run(fc.download_dataset, created.dataset_id, dest) != expected:
                    raise RuntimeError("the controller's repeated download has another SHA-256")
                dest.unlink()
                ttfb.run(_first_byte, fc, created.dataset_id)
                raw.remove_object(bucket, key)
                tiny = small_up.run(fc.push_dataset, small, meta)
                small_down.run(fc.download_dataset, tiny.dataset_id, tmp / "tiny.bin")
    finally:
        state.close()

    print(_header(f"Transfer of a {size // MIB} MiB object via SeaweedFS S3", "raw minio's", other=True))
    for t, ref in (
        (up_raw, up_raw),
        (up_ctl, up_raw),
        (down_raw, down_raw),
        (down_ctl, down_raw),
        (down_again, down_raw),
    ):
        print(_row(t, ref))

    def ms(t: Timing) -> float:
        return round(statistics.median(t.seconds) * 1e3, 1)

    print(
        f"  controller download, time to first byte (headers): median {ms(ttfb):.0f} ms,"
        f" py CPU {statistics.median(ttfb.cpu):.2f} s, S3 CPU {statistics.median(ttfb.other):.2f} s"
    )
    print(
        f"  fixed cost of a 1 KiB object, median: push {ms(small_up):.0f} ms,"
        f" download {ms(small_down):.0f} ms"
    )
    return {
        "object_mib": size // MIB,
        "upload_controller_mbps": round(up_ctl.best_mbps, 1),
        "upload_raw_mbps": round(up_raw.best_mbps, 1),
        "upload_ratio": round(up_ctl.best_mbps / up_raw.best_mbps, 3),
        "download_controller_mbps": round(down_ctl.best_mbps, 1),
        "download_raw_mbps": round(down_raw.best_mbps, 1),
        "download_ratio": round(down_ctl.best_mbps / down_raw.best_mbps, 3),
        "download_again_controller_mbps": round(down_again.best_mbps, 1),
        "download_again_ratio": round(down_again.best_mbps / down_raw.best_mbps, 3),
        "upload_controller_median_mbps": round(up_ctl.median_mbps, 1),
        "upload_raw_median_mbps": round(up_raw.median_mbps, 1),
        "download_controller_median_mbps": round(down_ctl.median_mbps, 1),
        "download_raw_median_mbps": round(down_raw.median_mbps, 1),
        "upload_controller_cpu_s_per_gib": round(up_ctl.cpu_per_gib(up_ctl.cpu), 3),
        "upload_raw_cpu_s_per_gib": round(up_raw.cpu_per_gib(up_raw.cpu), 3),
        "download_controller_cpu_s_per_gib": round(down_ctl.cpu_per_gib(down_ctl.cpu), 3),
        "download_raw_cpu_s_per_gib": round(down_raw.cpu_per_gib(down_raw.cpu), 3),
        "download_controller_s3_cpu_s_per_gib": round(down_ctl.cpu_per_gib(down_ctl.other), 3),
        "download_raw_s3_cpu_s_per_gib": round(down_raw.cpu_per_gib(down_raw.other), 3),
        "download_ttfb_ms": ms(ttfb),
        "small_push_ms": ms(small_up),
        "small_download_ms": ms(small_down),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Hashing and transfer throughput vs reference tools.")
    parser.add_argument("--quick", action="store_true", help="256 MiB file, 64 MiB object")
    parser.add_argument("--repeat", type=int, default=3, help="runs per method (default 3)")
    parser.add_argument("--skip-transfer", action="store_true", help="only the hashing part")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    file_size = (256 if args.quick else 1024) * MIB
    object_size = (64 if args.quick else 256) * MIB
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"bench/hashing: {os.cpu_count()} CPUs (load {load}), python {sys.version.split()[0]}, "
          f"{'quick' if args.quick else 'full'} run, {args.repeat} runs per method", flush=True)  # fmt: skip

    summary: dict[str, Any] = {"bench": "hashing", "quick": args.quick, "repeat": args.repeat}
    tmp = Path(tempfile.mkdtemp(prefix="fedge-bench-hashing-"))
    try:
        summary.update(bench_hash(tmp, file_size, args.repeat))
        if not args.skip_transfer:
            summary.update(bench_transfer(tmp, object_size, args.repeat))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print()
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
