"""Process-wide event metrics of the controller, recorded by small hooks (decorators) in the code that does
the work: chain transactions, MQTT messages, start-up reconciliation. Registered in no registry: each app's
registry exposes them (:mod:`controller.observability.metrics`). This module imports nothing of the
controller, so the chain, broker and registry code can import it without a circle."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from typing import Any, ParamSpec, TypeVar

from prometheus_client import Counter, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from fedge_protocol.topics import Leaf, split_device_topic

P = ParamSpec("P")
R = TypeVar("R")
OTHER_LEAF = "other"
CHAIN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

CHAIN_TX_SECONDS = Histogram(
    "fedge_controller_chain_tx_seconds",
    "Chain transactions: simulate, sign, send and await the receipt (seconds), by outcome.",
    ["outcome"],
    buckets=CHAIN_BUCKETS,
    registry=None,
)
CHAIN_TX_FAILURES = Counter(
    "fedge_controller_chain_tx_failures",
    "Chain transactions that raised (revert, node unavailable, nonce exhausted), by error class.",
    ["error"],
    registry=None,
)
MQTT_RECEIVED = Counter(
    "fedge_controller_mqtt_messages_received",
    "MQTT messages the controller received from devices, by topic leaf (fedge_protocol.topics.Leaf).",
    ["leaf"],
    registry=None,
)
MQTT_PUBLISHED = Counter(
    "fedge_controller_mqtt_messages_published",
    "MQTT messages the controller published, by topic leaf and outcome (ok: acknowledged; failed).",
    ["leaf", "outcome"],
    registry=None,
)
RECONCILE_REMOVED = Counter(
    "fedge_controller_reconcile_removed",
    "What start-up reconciliation removed (stale pending rows, orphan objects, incomplete uploads), by kind.",
    ["kind"],
    registry=None,
)
_PROCESS_METRICS = (CHAIN_TX_SECONDS, CHAIN_TX_FAILURES, MQTT_RECEIVED, MQTT_PUBLISHED, RECONCILE_REMOVED)


def topic_leaf(topic: str) -> str:
    """The :class:`Leaf` of a fleet topic (``fedge/devices/{id}/{leaf}``); ``other`` for anything else."""
    found = split_device_topic(topic)
    if found is None or found[1] not in Leaf.__members__.values():
        return OTHER_LEAF
    return found[1]


def timed_chain_tx(fn: Callable[P, R]) -> Callable[P, R]:
    """Decorate a chain backend's transaction method: its latency and failures."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        started = time.perf_counter()
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            CHAIN_TX_SECONDS.labels("failed").observe(time.perf_counter() - started)
            CHAIN_TX_FAILURES.labels(type(exc).__name__).inc()
            raise
        CHAIN_TX_SECONDS.labels("ok").observe(time.perf_counter() - started)
        return result

    return wrapper


def counted_publish(fn: Callable[..., bool]) -> Callable[..., bool]:
    """Decorate ``Broker.publish(self, topic, ...) -> bool``."""

    @functools.wraps(fn)
    def wrapper(self: Any, topic: str, *args: Any, **kwargs: Any) -> bool:
        ok = fn(self, topic, *args, **kwargs)
        MQTT_PUBLISHED.labels(topic_leaf(topic), "ok" if ok else "failed").inc()
        return ok

    return wrapper


def counted_receive(fn: Callable[..., None]) -> Callable[..., None]:
    """Decorate a message handler ``(self, topic, payload)``."""

    @functools.wraps(fn)
    def wrapper(self: Any, topic: str, *args: Any, **kwargs: Any) -> None:
        MQTT_RECEIVED.labels(topic_leaf(topic)).inc()
        fn(self, topic, *args, **kwargs)

    return wrapper


def counted_reconcile(fn: Callable[P, dict[str, int]]) -> Callable[P, dict[str, int]]:
    """Decorate the reconciliation: add its removal counts by kind."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> dict[str, int]:
        removed = fn(*args, **kwargs)
        for kind, n in removed.items():
            RECONCILE_REMOVED.labels(kind).inc(n)
        return removed

    return wrapper


class ProcessCollector(Collector):
    """Exposes the process-wide event metrics in one app's registry."""

    def collect(self) -> Iterator[Metric]:
        for metric in _PROCESS_METRICS:
            yield from metric.collect()
