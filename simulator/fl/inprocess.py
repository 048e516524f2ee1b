"""The fedge ServerApp and ClientApp in one process, without a Flower runtime: a grid that hands every
message to the real ClientApp of each node, with fixed node ids.

Flower's simulation draws random node ids, and the ClientApp mixes the node id into each device's
shuffling seed, so two simulated runs of the same job differ by their shuffles. Here node ids are fixed
(``first_node + partition``), so two jobs that differ in one setting (e.g. HE on or off) differ only by
that setting: ``bench/fl.py`` compares HE and plaintext FedAvg this way, and the HE tests use it. The
grid copies each message across (as a transport would) and keeps what the server sent and received.
"""

from __future__ import annotations

import copy
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedge_protocol.federation import CONFIG, TrainKey

__all__ = ["InProcessGrid", "InProcessOutcome", "run_in_process"]


@dataclass
class InProcessGrid:
    """A ``flwr.serverapp.Grid`` stand-in for ``run_federation``: ``get_node_ids`` and
    ``send_and_receive``; ``drop`` loses the train replies of some nodes in given server rounds."""

    app: Any  # flwr.clientapp.ClientApp
    contexts: dict[int, Any]  # node id -> flwr.app.Context
    drop: dict[int, set[int]] = field(default_factory=dict)
    sent: list[Any] = field(default_factory=list)
    received: list[Any] = field(default_factory=list)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def send_and_receive(self, messages: Iterable[Any], *, timeout: float | None = None) -> list[Any]:
        replies = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            msg.metadata.__dict__["_created_at"] = time.time()
            self.sent.append(copy.deepcopy(msg))
            node = int(msg.metadata.dst_node_id)
            reply = self.app(copy.deepcopy(msg), self.contexts[node])
            reply.metadata.__dict__["_src_node_id"] = node
            config = msg.content.config_records.get(CONFIG)
            lost = self.drop.get(int(str(config.get(TrainKey.SERVER_ROUND, 0))), set()) if config else set()
            if msg.metadata.message_type == "train" and node in lost:
                continue
            self.received.append(copy.deepcopy(reply))
            replies.append(reply)
        return replies


@dataclass(frozen=True)
class InProcessOutcome:
    reports: list[Any]  # RoundReport
    summary: Any  # RunSummary | None
    seconds: float
    grid: InProcessGrid


def run_in_process(
    shards: list[Any],  # edge_agent.learning.data.LocalData per device
    run_config: Mapping[str, Any],
    state_root: Path,
    *,
    budget_epsilon: float = 0.0,
    delta: float = 1e-5,
    first_node: int = 100,
    drop: dict[int, set[int]] | None = None,
    on_report: Callable[[Any], None] | None = None,
) -> InProcessOutcome:
    """Run one job over ``len(shards)`` devices with node ids ``first_node, first_node + 1, ...``."""
    from flwr.app import Context, RecordDict

    from controller.federation.serverapp import FederationConfig, ListReporter, run_federation
    from edge_agent.learning.clientapp import DevicePolicy, make_client_app

    def index(context: Any) -> int:
        return int(context.node_id) - first_node

    def policy(context: Any) -> DevicePolicy:
        return DevicePolicy(dataset_id="digits", budget_epsilon=budget_epsilon, delta=delta)

    app = make_client_app(lambda c: shards[index(c)], lambda c: state_root / f"device-{index(c)}", policy)
    contexts = {first_node + i: Context(1, first_node + i, {}, RecordDict(), {}) for i in range(len(shards))}
    grid = InProcessGrid(app, contexts, drop=dict(drop or {}))

    class Relay(ListReporter):
        def on_round(self, report: Any) -> None:
            super().on_round(report)
            if on_report is not None:
                on_report(report)

    reporter = Relay()
    from flwr.supercore.task_identity import TaskIdentity

    saved: dict[str, Any] = {a: getattr(TaskIdentity, a, None) for a in ("_run_id", "_task_id", "_node_id")}
    for attr in saved:  # what a ServerApp process has set
        setattr(TaskIdentity, attr, 0 if attr == "_node_id" else 1)
    started = time.perf_counter()
    try:
        run_federation(grid, FederationConfig.from_run_config(dict(run_config)), reporter)  # type: ignore[arg-type]
    finally:
        for attr, old in saved.items():
            setattr(TaskIdentity, attr, old)
    return InProcessOutcome(reporter.rounds, reporter.summary, time.perf_counter() - started, grid)
