"""Run the fedge ClientApp and ServerApp in Flower's simulation runtime (Ray), one virtual SuperNode per
partition of a :class:`~simulator.fl.partition.FederatedData`.

The apps are the deployment ones built by their factories: the ClientApp reads partition
``context.node_config["partition-id"]`` instead of a file, and keeps each device's privacy ledger in
``<state_root>/device-<k>/privacy/``; the ServerApp takes its run config and an in-memory reporter from
the caller. Ray is kept on loopback and small (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, no dashboard),
telemetry and update checks are off, and without a ``FLWR_HOME`` one is made under ``state_root``.

``faulty={partition: kind}`` makes those devices misbehave after training honestly, through a Flower mod
on their train replies: ``wrong-shape`` (every array reshaped to one dimension with an extra element),
``nan`` (the first array filled with NaN), ``scaled`` (every array times -10, a well-formed but hostile
update for the robust strategies).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedge_common.quiet import QUIET_ENV as QUIET
from simulator.fl.partition import FederatedData

__all__ = ["FAULTS", "QUIET_ENV", "SimulationOutcome", "simulate"]

FAULTS = ("wrong-shape", "nan", "scaled")

#: set before Flower or Ray start: no telemetry, no update check, Ray on 127.0.0.1
QUIET_ENV = {
    **QUIET,
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",  # else ray.init warns (FutureWarning) on every start
}


@dataclass(frozen=True)
class SimulationOutcome:
    reports: list[Any]  # RoundReport
    summary: Any  # RunSummary | None
    seconds: float


def simulate(
    data: FederatedData,
    run_config: Mapping[str, Any],
    state_root: Path,
    *,
    budget_epsilon: float = 0.0,
    delta: float = 1e-5,
    num_cpus: int = 2,
    faulty: Mapping[int, str] | None = None,
    on_result: Callable[[Any], None] | None = None,
    on_report: Callable[[Any], None] | None = None,
) -> SimulationOutcome:
    """Run one federated job over ``data.num_clients`` virtual SuperNodes and return its reports;
    ``on_report`` also gets each RoundReport as its phase ends (in the ServerApp's thread)."""
    faults = dict(faulty or {})
    bad = {kind for kind in faults.values() if kind not in FAULTS}
    if bad:
        raise ValueError(f"unknown fault {sorted(bad)} (known: {', '.join(FAULTS)})")
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    own_home = "FLWR_HOME" not in os.environ  # never the default one (its config names an outside host)
    if own_home:
        home = state_root / "flwr-home"
        home.mkdir(parents=True, exist_ok=True)
        (home / "config.toml").write_text('[superlink]\ndefault = "local"\n')
        os.environ["FLWR_HOME"] = str(home)
    from flwr.app import Array, ArrayRecord, Context, Message, MessageType
    from flwr.clientapp.typing import ClientAppCallable
    from flwr.simulation import run_simulation

    from controller.federation.serverapp import ListReporter, make_server_app
    from edge_agent.learning.clientapp import DevicePolicy, make_client_app
    from edge_agent.learning.data import LocalData

    shards = [
        LocalData(x=x, y=y, x_test=xt, y_test=yt)
        for (x, y), (xt, yt) in zip(data.train, data.test, strict=True)
    ]

    def partition(context: Context) -> int:
        return int(str(context.node_config["partition-id"]))

    def load_data(context: Context) -> LocalData:
        return shards[partition(context)]

    def state_dir_for(context: Context) -> Path:
        return state_root / f"device-{partition(context)}"

    def policy_for(context: Context) -> DevicePolicy:
        return DevicePolicy(dataset_id="digits", budget_epsilon=budget_epsilon, delta=delta)

    def corrupt(array: Any, kind: str, first: bool) -> Any:
        values = np.asarray(array.numpy(), dtype=np.float32)
        if kind == "wrong-shape":
            return Array(np.append(values.ravel(), np.float32(0.0)))
        if kind == "nan":
            return Array(np.full_like(values, np.nan) if first else values)
        return Array(values * np.float32(-10.0))

    def fault_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        reply = call_next(msg, context)
        kind = faults.get(partition(context))
        if kind is None or msg.metadata.message_type != MessageType.TRAIN or reply.has_error():
            return reply
        record = reply.content["arrays"]
        reply.content["arrays"] = ArrayRecord(
            {name: corrupt(a, kind, i == 0) for i, (name, a) in enumerate(record.items())}
        )
        return reply

    class Relay(ListReporter):
        def on_round(self, report: Any) -> None:
            super().on_round(report)
            if on_report is not None:
                on_report(report)

    reporter = Relay()
    cancel = threading.Event()  # ends the ServerApp thread if the runtime dies before any node came
    server = make_server_app(
        reporter=reporter, run_config=dict(run_config), on_result=on_result, cancel=cancel
    )
    client = make_client_app(load_data, state_dir_for, policy_for, mods=[fault_mod] if faults else None)
    started = time.perf_counter()
    try:
        run_simulation(
            server_app=server,
            client_app=client,
            num_supernodes=data.num_clients,
            backend_config={
                "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                "init_args": {
                    "num_cpus": num_cpus,
                    "num_gpus": 0,
                    "include_dashboard": False,
                    "object_store_memory": 200 * 1024 * 1024,
                },
            },
        )
    finally:
        cancel.set()
        if own_home:
            os.environ.pop("FLWR_HOME", None)
    return SimulationOutcome(
        reports=reporter.rounds, summary=reporter.summary, seconds=time.perf_counter() - started
    )
