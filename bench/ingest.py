"""Telemetry ingest on the controller's database: the per-message path an MQTT message took before the
ingest queue (``Fleet.touch`` + ``Commands.record_telemetry`` with its prune: three committed writes) vs
the queue's batched worker (``IngestQueue``: one transaction per batch, prune on a schedule), N messages
from D devices, SQLite on the local disk.

    python bench/ingest.py [--messages 3000] [--devices 10]

Ends with one JSON line: ``{"per_message_msgs_s", "batched_msgs_s", "speedup"}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controller.chain.factory import make_chain_backend
from controller.config import ControllerSettings
from controller.db.models import Device, utcnow
from controller.fleet.ingest import IngestQueue, incoming
from controller.state import build_state
from fedge_protocol import Leaf, OutboxMessage


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--devices", type=int, default=10)
    args = parser.parse_args(argv)
    n, d = args.messages, args.devices
    with tempfile.TemporaryDirectory(prefix="fedge-bench-ingest-") as tmp:
        settings = ControllerSettings(
            data_dir=Path(tmp),
            admin_token="fedge_bench-ingest-0123456789abcdef",
            broker_backend="none",
            _env_file=None,
        )  # type: ignore[call-arg]
        chain = make_chain_backend("evm", Path(tmp) / "evm")
        state = build_state(settings, chain, start_jobs=False)
        try:
            with state.sessions.begin() as s:
                for i in range(2 * d):
                    row = Device(id=f"dev-{i}", status="active", labels={}, facts={}, certificate="-")
                    row.cert_serial, row.desired_revision, row.last_seen_at = "1", 0, utcnow()
                    s.add(row)
            state.fleet.last_seen_write_seconds = 0.0  # the old path wrote last_seen_at per message
            t = time.perf_counter()
            for k in range(n):
                dev = f"dev-{k % d}"
                state.fleet.touch(dev)
                state.commands.record_telemetry(dev, k + 1, {"temp": k})
            per_message = n / (time.perf_counter() - t)
            q = IngestQueue(
                state.fleet, state.rollouts, state.commands, accept=lambda _d, _s: True, observers=[]
            )
            q.start()
            t = time.perf_counter()
            for k in range(n):
                dev = f"dev-{d + k % d}"
                q.submit(incoming(dev, OutboxMessage(kind=Leaf.TELEMETRY, seq=k + 1, body={"temp": k}), None))
            q.stop()
            batched = n / (time.perf_counter() - t)
        finally:
            state.close()
            chain.close()
    out = {
        "bench": "ingest",
        "messages": n,
        "devices": d,
        "per_message_msgs_s": round(per_message, 1),
        "batched_msgs_s": round(batched, 1),
        "speedup": round(batched / per_message, 2),
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
