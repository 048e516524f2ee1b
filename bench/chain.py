"""Chain benchmark: gas and wall time per dataset registration and per model verify, on the in-process
EVM and on a real anvil node (started here on a free port), plus registrations/s, journal replay speed,
and the per-asset-contract (seed) vs registry gas comparison.

Start-up: the time to open the in-process chain with 1,000 and 10,000 journaled registrations, from the
state snapshot (tail replay) vs a full journal replay (snapshot moved aside); a full replay over
--full-replay-max transactions is estimated from the rate measured at the smaller count (marked so).

usage: python bench/chain.py [--quick] [--startup 1000,10000] [--full-replay-max 2000]
Prints a table, then one line of JSON with every figure.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from controller.chain import ChainBackend, TxReceipt, make_chain_backend  # noqa: E402
from tests.fixtures.services import run_anvil  # noqa: E402


def sha(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def uid() -> str:
    return str(uuid.uuid4())


def measure(samples: list[tuple[float, int]], call: Callable[..., TxReceipt], *args: Any) -> TxReceipt:
    """Run one chain write, recording its wall time and gas."""
    started = time.perf_counter()
    receipt = call(*args)
    samples.append((time.perf_counter() - started, receipt.gas_used))
    return receipt


def summarize(samples: list[tuple[float, int]]) -> dict[str, float | int]:
    seconds = [s for s, _ in samples]
    gas = sorted({g for _, g in samples})
    ordered = sorted(seconds)
    return {
        "n": len(samples),
        "gas": int(statistics.median(g for _, g in samples)),
        "gas_min": gas[0],
        "gas_max": gas[-1],
        "ms_median": round(statistics.median(seconds) * 1e3, 2),
        "ms_p95": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] * 1e3, 2),
        "per_s": round(len(seconds) / sum(seconds), 1),
    }


def run_backend(backend: ChainBackend, n: int, n_seed: int) -> dict[str, dict[str, float | int]]:
    """Realistic ids (UUIDs) and digests; one operation at a time, as a REST handler would."""
    samples: dict[str, list[tuple[float, int]]] = {
        op: []
        for op in (
            "register_dataset",
            "register_model",
            "verify_model",
            "record_artifact",
            "record_fl_run_10",
            "seed_deploy_dataset",
            "seed_deploy_model",
            "seed_verify",
        )
    }
    dataset_ids = [uid() for _ in range(n)]
    for d in dataset_ids:
        md5 = hashlib.md5(d.encode()).digest()
        measure(
            samples["register_dataset"],
            backend.register_dataset,
            d,
            uid(),
            "(128,128,3)",
            1_840_000,
            sha(d),
            md5,
        )
    for d in dataset_ids:
        m = uid()
        measure(samples["register_model"], backend.register_model, m, uid(), uid(), d, sha("img" + m))
        measure(samples["verify_model"], backend.verify_model, m, sha("result" + m))
        measure(samples["record_artifact"], backend.record_artifact, m, 1, "onnx", sha("onnx" + m))
    devices = [f"device-{i}" for i in range(10)]
    for _ in range(n_seed):
        measure(
            samples["record_fl_run_10"], backend.record_fl_run, uid(), devices, 20, "fedavg", sha("final")
        )
    for _ in range(n_seed):
        d = uid()
        dataset_args = {
            "dataset_id": d,
            "organization_id": uid(),
            "samples_dimension": "(128,128,3)",
            "size_bytes": 1_840_000,
            "sha256": sha(d),
            "hash": hashlib.md5(d.encode()).digest(),
        }
        measure(samples["seed_deploy_dataset"], backend.seed_contracts.deploy, "dataset", dataset_args)
        model_args = {
            "model_id": uid(),
            "organization_id": uid(),
            "developer_id": uid(),
            "dataset_id": d,
            "train_image_hash": sha("img" + d),
        }
        address = measure(
            samples["seed_deploy_model"], backend.seed_contracts.deploy, "model", model_args
        ).contract_address
        measure(samples["seed_verify"], backend.seed_contracts.verify, address, sha("result" + address))
    return {op: summarize(values) for op, values in samples.items()}


def timed_open(data_dir: Path) -> float:
    started = time.perf_counter()
    backend = make_chain_backend("evm", data_dir)
    seconds = time.perf_counter() - started
    backend.close()
    return seconds


def mine_registrations(backend: Any, start: int, stop: int) -> None:
    """registerDataset transactions signed and mined straight into the in-process node: the journal gets
    the same records as register_dataset() writes, without its per-call eth_call simulation and fee
    look-ups (so 10,000 records build in minutes)."""
    w3, node = backend._w3, backend._node
    # building the fixture journal: no fsync per append (the bytes are the same; start-up is timed later)
    real_fsync, os.fsync = os.fsync, lambda fd: None
    try:
        _mine(backend, w3, node, start, stop)
    finally:
        os.fsync = real_fsync


def _mine(backend: Any, w3: Any, node: Any, start: int, stop: int) -> None:
    nonce = w3.eth.get_transaction_count(backend.controller_address)
    fees = backend._fee_fields()
    for i in range(start, stop):
        args = [f"ds-{i}", "org", "(3,)", 10, sha(f"d{i}"), sha(f"m{i}")[:16]]
        tx = {
            "to": backend.registry_address,
            "data": backend._registry.encode_abi("registerDataset", args=args),
            "gas": 1_000_000,
            "nonce": nonce,
            "chainId": backend.chain_id,
            "value": 0,
            **fees,
        }
        with backend._lock:
            receipt = node.mine(backend._key.sign_transaction(tx), None)
        if receipt["status"] != 1:
            raise SystemExit(f"registration {i} reverted")
        nonce += 1


def full_replay_open(data_dir: Path) -> float:
    """Seconds to open the in-process chain replaying its whole journal (the snapshot moved aside)."""
    from controller.chain import evm

    snapshot = data_dir / "chain" / evm.SNAPSHOT_FILE_NAME
    aside = snapshot.with_name(snapshot.name + ".aside")
    if snapshot.exists():
        snapshot.rename(aside)
    saved, evm.SNAPSHOT_EVERY = evm.SNAPSHOT_EVERY, 10**12
    try:
        return timed_open(data_dir)
    finally:
        evm.SNAPSHOT_EVERY = saved
        snapshot.unlink(missing_ok=True)
        if aside.exists():
            aside.rename(snapshot)


def startup(counts: list[int], full_max: int) -> list[dict[str, Any]]:
    """Grow one journal to each count of registrations and time opening it with and without the snapshot."""
    from controller.chain import evm

    rows: list[dict[str, Any]] = []
    rate: float | None = None
    with tempfile.TemporaryDirectory(prefix="fedge-bench-startup-") as tmp:
        data_dir = Path(tmp)
        snapshot = data_dir / "chain" / evm.SNAPSHOT_FILE_NAME
        done = 0
        for count in sorted(counts):
            backend = make_chain_backend("evm", data_dir)
            try:
                mine_registrations(backend, done, count)
            finally:
                backend.close()  # a clean close writes the snapshot
            done = count
            journal = data_dir / "chain" / evm.JOURNAL_FILE_NAME
            transactions = len(journal.read_text().splitlines()) - 1
            with_snapshot = timed_open(data_dir)
            row: dict[str, Any] = {
                "records": count,
                "transactions": transactions,
                "snapshot_mb": round(snapshot.stat().st_size / 1e6, 1),
                "startup_s_snapshot": round(with_snapshot, 3),
            }
            if transactions <= full_max or rate is None:
                full = full_replay_open(data_dir)
                rate = transactions / full
                row.update(startup_s_full_replay=round(full, 2), full_replay_estimated=False)
            else:
                row.update(startup_s_full_replay=round(transactions / rate, 2), full_replay_estimated=True)
            row["replay_tx_per_s"] = round(rate, 1)
            row["speedup"] = round(row["startup_s_full_replay"] / with_snapshot, 1)
            rows.append(row)
            print(f"start-up {row}", flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description="chain backend benchmark")
    parser.add_argument("--quick", action="store_true", help="fewer operations (a smoke run)")
    parser.add_argument("--startup", default=None, help="registration counts for start-up (1000,10000)")
    parser.add_argument("--full-replay-max", type=int, default=2000, help="largest full replay to run")
    args = parser.parse_args()
    counts = [int(c) for c in (args.startup or ("100" if args.quick else "1000,10000")).split(",") if c]
    n, n_seed = (20, 5) if args.quick else (200, 30)
    results: dict[str, dict[str, dict[str, float | int]]] = {}
    replay: dict[str, float | int] = {}
    startups = startup(counts, args.full_replay_max)
    with tempfile.TemporaryDirectory(prefix="fedge-bench-chain-") as tmp:
        evm_dir = Path(tmp) / "evm"
        backend = make_chain_backend("evm", evm_dir)
        try:
            results["evm"] = run_backend(backend, n, n_seed)
        finally:
            backend.close()
        journal = evm_dir / "chain" / "evm-journal.jsonl"
        transactions = len(journal.read_text().splitlines()) - 1
        seconds = full_replay_open(evm_dir)
        replay = {
            "transactions": transactions,
            "seconds": round(seconds, 2),
            "tx_per_s": round(transactions / seconds),
        }
        with run_anvil(Path(tmp)) as url:
            backend = make_chain_backend(
                "jsonrpc", Path(tmp) / "anvil", rpc_url=url, private_key="0x" + os.urandom(32).hex()
            )
            try:
                results["anvil"] = run_backend(backend, n, n_seed)
            finally:
                backend.close()

    print(f"chain benchmark: {n} registrations per backend, {n_seed} seed-style contracts, UUID ids")
    header = f"{'backend':<7} {'operation':<20} {'gas':>9} {'ms median':>10} {'ms p95':>8} {'ops/s':>8}"
    print(header)
    print("-" * len(header))
    for name, ops in results.items():
        for op, figures in ops.items():
            gas, median, p95, per_s = (
                figures["gas"],
                figures["ms_median"],
                figures["ms_p95"],
                figures["per_s"],
            )
            print(f"{name:<7} {op:<20} {gas:>9,} {median:>10.2f} {p95:>8.2f} {per_s:>8.1f}")
    evm = results["evm"]
    ratio = {
        "dataset": round(evm["seed_deploy_dataset"]["gas"] / evm["register_dataset"]["gas"], 2),
        "model": round(evm["seed_deploy_model"]["gas"] / evm["register_model"]["gas"], 2),
    }
    print(
        f"per-asset contract vs registry entry, gas: dataset x{ratio['dataset']}, model x{ratio['model']}; "
        f"evm journal replay: {replay['transactions']} tx in {replay['seconds']} s "
        f"({replay['tx_per_s']} tx/s)"
    )
    summary = {
        "bench": "chain",
        "quick": args.quick,
        "n": n,
        "n_seed": n_seed,
        "registrations_per_s": {name: ops["register_dataset"]["per_s"] for name, ops in results.items()},
        "gas": {name: {op: f["gas"] for op, f in ops.items()} for name, ops in results.items()},
        "ms_median": {name: {op: f["ms_median"] for op, f in ops.items()} for name, ops in results.items()},
        "per_asset_over_registry_gas": ratio,
        "evm_replay": replay,
        "ecc_backend": type(__import__("eth_keys").backends.get_backend()).__name__,
        "startup": startups,
        "startup_goal_s": 3.0,
        "startup_goal_met": all(r["startup_s_snapshot"] <= 3.0 for r in startups),
    }
    print(json.dumps(summary, sort_keys=True, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
