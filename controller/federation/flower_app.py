"""The deployment ServerApp of an FL job: :mod:`controller.federation.serverapp` on a grid that shows the
strategy only the job's own participant nodes, and gives up when too few of them stay connected.

Two run-config keys besides the ServerApp's own (``RUN_CONFIG_DEFAULTS``):

``fedge-participant-nodes``   space-separated node ids the job may sample ("": every connected node)
``fedge-node-wait-timeout``   seconds a phase may wait for ``min-nodes`` connected participants (300)

Flower's strategies sample from ``grid.get_node_ids()`` and wait, without a limit, until
``min_available_nodes`` are connected. On one SuperLink every device that ever joined stays a node, so
the filter keeps another job's devices (or a device that was not chosen) out of this job; the wait limit
turns a dropped device into a failed job with a reason instead of a job that never ends. A failure is
reported to the controller (``{"type": "failed", "reason": ...}``) before the ServerApp exits.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

import httpx
from flwr.app import Context, Message, RecordDict
from flwr.proto.node_pb2 import NodeInfo
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.run import Run

from controller.federation.serverapp import (
    FederationConfig,
    HttpReporter,
    ListReporter,
    Reporter,
    run_federation,
)

__all__ = [
    "EXTRA_DEFAULTS",
    "NODE_WAIT_KEY",
    "PARTICIPANTS_KEY",
    "NodesUnavailable",
    "ParticipantGrid",
    "make_server_app",
    "parse_nodes",
    "server_app",
]

log = logging.getLogger("fedge.controller.federation")

PARTICIPANTS_KEY = "fedge-participant-nodes"
NODE_WAIT_KEY = "fedge-node-wait-timeout"
EXTRA_DEFAULTS: dict[str, str | float] = {PARTICIPANTS_KEY: "", NODE_WAIT_KEY: 300.0}


class NodesUnavailable(RuntimeError):
    """Fewer than the job's minimum of participant nodes stayed connected for too long."""


def parse_nodes(text: str) -> frozenset[int] | None:
    """``"12 34"`` -> {12, 34}; "" -> None (no restriction)."""
    parts = text.replace(",", " ").split()
    return frozenset(int(p) for p in parts) if parts else None


class ParticipantGrid(Grid):
    """A grid that lists only ``allowed`` nodes and raises :class:`NodesUnavailable` once fewer than
    ``min_nodes`` of them have been connected for ``wait_s`` seconds in a row."""

    def __init__(
        self,
        inner: Grid,
        allowed: frozenset[int] | None,
        *,
        min_nodes: int,
        wait_s: float,
        clock: Any = time.monotonic,
    ) -> None:
        self.inner = inner
        self.allowed = allowed
        self.min_nodes = min_nodes
        self.wait_s = wait_s
        self._clock = clock
        self._short_since: float | None = None

    def _keep(self, node_id: int) -> bool:
        return self.allowed is None or node_id in self.allowed

    def get_node_ids(self) -> Iterable[int]:
        ids = [n for n in self.inner.get_node_ids() if self._keep(n)]
        now = self._clock()
        if len(ids) >= self.min_nodes:
            self._short_since = None
        elif self._short_since is None:
            self._short_since = now
        elif now - self._short_since > self.wait_s:
            of = f" of the job's {len(self.allowed)}" if self.allowed is not None else ""
            raise NodesUnavailable(
                f"only {len(ids)}{of} participant device(s) connected for {self.wait_s:.0f} s; "
                f"the job needs at least {self.min_nodes}"
            )
        return ids

    def get_nodes(self) -> Iterable[NodeInfo]:
        return [n for n in self.inner.get_nodes() if self._keep(n.node_id)]

    # -- delegated ---------------------------------------------------------------------------------

    def set_run(self, run: Run) -> None:
        self.inner.set_run(run)

    @property
    def run(self) -> Run:
        return self.inner.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self.inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.inner.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self.inner.send_and_receive(messages, timeout=timeout)


def _report_failure(url: str, token: str, job_id: str, run_id: int, reason: str) -> None:
    if not url:
        return
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    body = {"type": "failed", "job_id": job_id, "run_id": run_id, "reason": reason[:4000]}
    try:
        httpx.post(url, json=body, headers=headers, timeout=5.0).raise_for_status()
    except httpx.HTTPError as exc:
        log.error("could not report the failure to %s: %s", url, exc)


def make_server_app(reporter: Reporter | None = None) -> ServerApp:
    """The deployment ServerApp (``reporter`` replaces the one ``report-url`` makes; tests)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_config: dict[str, Any] = dict(context.run_config)
        allowed = parse_nodes(str(run_config.pop(PARTICIPANTS_KEY, "")))
        wait_s = float(run_config.pop(NODE_WAIT_KEY, EXTRA_DEFAULTS[NODE_WAIT_KEY]))
        config = FederationConfig.from_run_config(run_config)
        url, token = str(config["report-url"]), str(config["report-token"])
        job_id = str(config["job-id"]) or f"flwr-run-{context.run_id}"
        chosen: Reporter = reporter or (HttpReporter(url, token=token) if url else ListReporter())
        guarded = ParticipantGrid(grid, allowed, min_nodes=int(config["min-nodes"]), wait_s=wait_s)
        try:
            if str(config["algorithm"]) == "fedpate":  # teachers' votes and a student (federation/pate.py)
                from controller.federation.pate import run_fedpate

                run_fedpate(guarded, config, chosen, run_id=int(context.run_id))
            else:
                run_federation(guarded, config, chosen, run_id=int(context.run_id))
        except Exception as exc:
            _report_failure(url, token, job_id, int(context.run_id), f"{type(exc).__name__}: {exc}")
            raise
        finally:
            if isinstance(chosen, HttpReporter) and reporter is None:
                chosen.close()

    return app


def config_keys(extra: Mapping[str, Any] = EXTRA_DEFAULTS) -> list[str]:
    """Every run-config key the deployment ServerApp reads."""
    from controller.federation.serverapp import RUN_CONFIG_DEFAULTS

    return sorted({*RUN_CONFIG_DEFAULTS, *extra})


#: the FAB's ServerApp component (``fedge_fab.server:app``)
server_app = make_server_app()
