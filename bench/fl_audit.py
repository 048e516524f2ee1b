"""FL audit benchmark: what putting a round on chain costs next to the round's aggregation.

For 10, 100 and 1000 updates of a model (100,000 float32 parameters; 10,000 with --quick), measured side
by side in the same loop, alternating which goes first:

* ``aggregate``: Flower's FedAvg ``aggregate_train`` over the round's reply messages (what the ServerApp
  does anyway);
* ``audit``: the server-side cost of the audit per round: the update digest of every reply
  (``fedge_protocol.merkle.update_digest``), the Merkle tree and every participant's proof, and the one
  ``record_fl_round`` transaction on the in-process EVM plus its read-back (``get_fl_round``);
* ``verify``: checking every proof against the root, what ``fedge fl audit`` does per round (each device
  checks one).

usage: python bench/fl_audit.py [--quick]
Prints a table, then one line of JSON (headline figures at 100 updates).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

for _key, _value in {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "DO_NOT_TRACK": "1",
}.items():
    os.environ.setdefault(_key, _value)

import numpy as np  # noqa: E402
from flwr.app import Array, ArrayRecord, Message, Metadata, MetricRecord, RecordDict  # noqa: E402

from controller.chain import ChainBackend, make_chain_backend  # noqa: E402
from controller.federation.strategies import build_strategy  # noqa: E402
from fedge_protocol.merkle import MerkleTree, update_digest, verify_proof  # noqa: E402

logging.getLogger("flwr").setLevel(logging.WARNING)  # no per-call INFO lines from the strategy

SIZES = (10, 100, 1000)
HEADLINE = 100


def replies(n: int, params: int, seed: int = 0) -> list[Message]:
    """``n`` train replies as the ServerApp receives them: an ``arrays`` ArrayRecord and metrics."""
    rng = np.random.default_rng(seed)
    cols = 1000
    rows = max(1, params // cols)
    out = []
    for node in range(1, n + 1):
        arrays = ArrayRecord(
            {
                "w": Array(rng.normal(size=(rows, cols)).astype(np.float32)),
                "b": Array(rng.normal(size=cols).astype(np.float32)),
            }
        )
        content = RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": 10 + node})})
        meta = Metadata(run_id=1, message_id=f"m{node}", src_node_id=node, dst_node_id=0,
                        reply_to_message_id="x", group_id="1", created_at=time.time(), ttl=60,
                        message_type="train")  # fmt: skip
        out.append(Message(content, metadata=meta))
    return out


def aggregate(msgs: list[Message]) -> ArrayRecord:
    strategy = build_strategy("fedavg", min_available_nodes=2, min_train_nodes=2, min_evaluate_nodes=2)
    arrays, _ = strategy.aggregate_train(1, msgs)
    assert arrays is not None
    return arrays


def audit(
    chain: ChainBackend, run_id: str, rnd: int, msgs: list[Message], agg: ArrayRecord
) -> dict[str, Any]:
    """The server-side audit of one round; seconds per part, and the tree for the verify step."""
    t0 = time.perf_counter()
    digests = [update_digest(m.content.array_records) for m in msgs]
    aggregate_digest = update_digest({"arrays": agg})
    t1 = time.perf_counter()
    tree = MerkleTree(digests)
    proofs = [tree.proof(i) for i in range(tree.count)]
    t2 = time.perf_counter()
    receipt = chain.record_fl_round(run_id, rnd, tree.root, aggregate_digest, tree.count)
    record = chain.get_fl_round(run_id, rnd)
    t3 = time.perf_counter()
    assert record.updates_root == tree.root
    return {"digest": t1 - t0, "tree": t2 - t1, "chain": t3 - t2, "gas": receipt.gas_used, "tree_obj": tree,
            "proofs": proofs}  # fmt: skip


def verify(tree: MerkleTree, proofs: list[list[bytes]]) -> float:
    t0 = time.perf_counter()
    for index, proof in enumerate(proofs):
        assert verify_proof(tree.leaves[index], index, tree.count, proof, tree.root)
    return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description="FL audit cost per round vs aggregation")
    parser.add_argument(
        "--quick", action="store_true", help="a smaller model and fewer repeats (a smoke run)"
    )
    args = parser.parse_args()
    params = 10_000 if args.quick else 100_000
    repeats = 2 if args.quick else 5
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        chain = make_chain_backend("evm", Path(tmp))
        try:
            run_id = f"bench-{uuid.uuid4()}"
            rnd = 0
            # warm the chain (first transaction) and the strategy
            warm = replies(2, params)
            rnd += 1
            audit(chain, run_id, rnd, warm, aggregate(warm))
            for n in SIZES:
                msgs = replies(n, params, seed=n)
                agg_s, parts, verify_s, gas = [], [], [], 0
                for r in range(repeats):
                    rnd += 1
                    if r % 2 == 0:
                        t = time.perf_counter()
                        agg = aggregate(msgs)
                        agg_s.append(time.perf_counter() - t)
                        a = audit(chain, run_id, rnd, msgs, agg)
                    else:
                        agg = aggregate(msgs)  # the aggregate the audit digests; timed after it this time
                        a = audit(chain, run_id, rnd, msgs, agg)
                        t = time.perf_counter()
                        aggregate(msgs)
                        agg_s.append(time.perf_counter() - t)
                    parts.append(a)
                    verify_s.append(verify(a["tree_obj"], a["proofs"]))
                    gas = a["gas"]
                med = statistics.median
                row = {
                    "aggregate_ms": med(agg_s) * 1000,
                    "digest_ms": med(p["digest"] for p in parts) * 1000,
                    "tree_proofs_ms": med(p["tree"] for p in parts) * 1000,
                    "chain_ms": med(p["chain"] for p in parts) * 1000,
                    "verify_all_ms": med(verify_s) * 1000,
                    "record_fl_round_gas": float(gas),
                }
                row["audit_ms"] = row["digest_ms"] + row["tree_proofs_ms"] + row["chain_ms"]
                row["audit_vs_aggregate_ratio"] = row["audit_ms"] / row["aggregate_ms"]
                results[str(n)] = row
                del msgs
        finally:
            chain.close()
    print(
        f"FL audit per round, {params:,} float32 parameters per update, median of {repeats}, in-process EVM"
    )
    header = ("updates", "aggregate ms", "digests ms", "tree+proofs ms", "chain tx ms", "audit ms",
              "audit/agg", "verify all ms", "gas")  # fmt: skip
    print(" | ".join(header))
    for n, r in results.items():
        cells = [n, f"{r['aggregate_ms']:.1f}", f"{r['digest_ms']:.1f}", f"{r['tree_proofs_ms']:.2f}",
                 f"{r['chain_ms']:.1f}", f"{r['audit_ms']:.1f}", f"{r['audit_vs_aggregate_ratio']:.2f}",
                 f"{r['verify_all_ms']:.2f}", f"{int(r['record_fl_round_gas']):,}"]  # fmt: skip
        print(" | ".join(cells))
    head = results[str(HEADLINE)]
    summary = {
        "bench": "fl_audit",
        "quick": args.quick,
        "params": params,
        "repeats": repeats,
        "updates_headline": HEADLINE,
        "audit_ms_per_round": round(head["audit_ms"], 3),
        "aggregate_ms_per_round": round(head["aggregate_ms"], 3),
        "audit_vs_aggregate_ratio": round(head["audit_vs_aggregate_ratio"], 4),
        "record_fl_round_gas": int(head["record_fl_round_gas"]),
        "by_updates": {n: {k: round(v, 4) for k, v in r.items()} for n, r in results.items()},
    }
    print(json.dumps(summary, sort_keys=True, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
