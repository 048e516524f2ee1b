"""Prometheus metrics of the controller, served at ``GET /metrics`` (text exposition format 0.0.4).

Three sources, every name ``fedge_controller_*`` (the table with labels and meanings: docs/metrics.md):

- **HTTP** (per app, :class:`HttpMetrics`, a pure ASGI middleware): requests by route *template*
  (``/v1/models/{model_id}``, never the raw path; ``unmatched`` for a path no route has), method and status,
  their latency, and the request/response body bytes (uploads, downloads) by route.
- **Process events** (process-wide, :mod:`controller.observability.events`, recorded by small hooks in
  the code that does the work): chain transactions (``timed_chain_tx`` on the web3 backends'
  ``_transact``), MQTT messages by topic leaf (:class:`fedge_protocol.topics.Leaf`; ``counted_publish`` on
  ``Broker.publish``, ``counted_receive`` on ``FleetMessaging._on_message``) and start-up reconciliation
  removals (``counted_reconcile``). They are registered in no registry of their own; each app's registry
  exposes them through ``ProcessCollector``, so reconciliation (which runs before the app exists) is
  counted too.
- **Database state** (:class:`DbStateCollector`): gauges computed at scrape time with one aggregate query
  each (``GROUP BY``), so every replica reports the same, current numbers: devices online, devices by status,
  deployments, training jobs and FL jobs by state.

Every app gets its own :class:`~prometheus_client.CollectorRegistry` (:func:`install_metrics`): two apps in
one process (the tests) never collide on a name.

Auth: like ``/healthz`` and ``/readyz``, ``/metrics`` needs no credential unless ``metrics_token`` is set;
then a scraper sends ``Authorization: Bearer <metrics_token>`` (Prometheus: ``authorization.credentials``).
The route is kept out of the OpenAPI document (it is the scraper's, not the API's, and not JSON).
"""

from __future__ import annotations

import datetime as dt
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from controller.errors import Unauthorized
from controller.observability.events import ProcessCollector

if TYPE_CHECKING:
    from fastapi import FastAPI

    from controller.state import ControllerState

log = logging.getLogger("fedge.controller.metrics")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

UNMATCHED = "unmatched"
"""The route label of a request no route matched (a 404 on an unknown path): raw paths never become labels."""
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ONLINE_POLLS = 3
"""A device is online while last seen within this many poll intervals (as ``GET /v1/devices`` reports)."""


# ----------------------------------------------------------------------------- database state
class DbStateCollector(Collector):
    """Gauges of the database's state, one aggregate query each, at scrape time."""

    def __init__(self, state: ControllerState) -> None:
        self.state = state

    def describe(self) -> Iterator[Metric]:
        return iter(())  # computed at scrape time only (no query at registration)

    def collect(self) -> Iterator[Metric]:
        from sqlalchemy import func, select

        from controller.api.devices import DEFAULT_POLL_SECONDS
        from controller.db.models import Deployment, Device, FlJob, Job, utcnow

        up = GaugeMetricFamily(
            "fedge_controller_db_scrape_ok", "1 when the database state gauges of this scrape could be read."
        )
        families: list[Metric] = []
        try:
            cutoff = utcnow() - dt.timedelta(seconds=ONLINE_POLLS * DEFAULT_POLL_SECONDS)
            with self.state.sessions() as s:
                online = s.scalar(
                    select(func.count())
                    .select_from(Device)
                    .where(Device.status == "active", Device.last_seen_at >= cutoff)
                )
                g = GaugeMetricFamily(
                    "fedge_controller_devices_online",
                    f"Active devices seen within {ONLINE_POLLS} poll intervals "
                    f"({ONLINE_POLLS * DEFAULT_POLL_SECONDS:g} s).",
                )
                g.add_metric([], float(online or 0))
                families.append(g)
                for name, doc, column in (
                    ("fedge_controller_devices", "Enrolled devices by status.", Device.status),
                    ("fedge_controller_deployments", "Deployments (rollouts) by state.", Deployment.state),
                    ("fedge_controller_jobs", "Training jobs by state.", Job.state),
                    ("fedge_controller_fl_jobs", "Federated learning jobs by state.", FlJob.state),
                ):
                    label = "status" if name == "fedge_controller_devices" else "state"
                    fam = GaugeMetricFamily(name, doc, labels=[label])
                    for value, n in s.execute(select(column, func.count()).group_by(column)).all():
                        fam.add_metric([str(value)], float(n))
                    families.append(fam)
        except Exception:
            log.exception("metrics: reading the database state failed")
            up.add_metric([], 0.0)
            yield up
            return
        up.add_metric([], 1.0)
        yield up
        yield from families


# ----------------------------------------------------------------------------- HTTP
class HttpMetrics:
    """ASGI middleware: requests, latency and body bytes by route template, method and status."""

    def __init__(self, app: ASGIApp, registry: CollectorRegistry) -> None:
        self.app = app
        self.requests = Counter(
            "fedge_controller_http_requests",
            "HTTP requests by route template, method and status code.",
            ["route", "method", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "fedge_controller_http_request_duration_seconds",
            "HTTP request latency (first byte received to last byte sent), by route template and method.",
            ["route", "method"],
            buckets=HTTP_BUCKETS,
            registry=registry,
        )
        self.upload = Counter(
            "fedge_controller_upload_bytes",
            "Request body bytes received (dataset, model and package uploads, JSON bodies), by route.",
            ["route"],
            registry=registry,
        )
        self.download = Counter(
            "fedge_controller_download_bytes",
            "Response body bytes sent (artifact downloads, JSON answers), by route.",
            ["route"],
            registry=registry,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # an exception that escapes every handler becomes a 500
        received = 0
        sent = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
            return message

        async def counting_send(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, counting_receive, counting_send)
        finally:
            route_obj = scope.get("route")
            route = getattr(route_obj, "path_format", None) or getattr(route_obj, "path", None) or UNMATCHED
            method = str(scope.get("method", ""))
            self.requests.labels(route, method, str(status)).inc()
            self.latency.labels(route, method).observe(time.perf_counter() - started)
            if received:
                self.upload.labels(route).inc(received)
            if sent:
                self.download.labels(route).inc(sent)


def build_registry(state: ControllerState) -> CollectorRegistry:
    """A fresh registry with the process-wide event metrics and the database gauges of ``state``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ProcessCollector())
    registry.register(DbStateCollector(state))
    return registry


def install_metrics(app: FastAPI, state: ControllerState) -> None:
    """Add the HTTP middleware and ``GET /metrics`` to ``app`` (call after the other middlewares: it becomes
    the outermost and sees every response, the guard's included)."""
    registry = build_registry(state)
    app.state.metrics_registry = registry
    app.add_middleware(HttpMetrics, registry=registry)

    @app.get("/metrics", include_in_schema=False)
    def metrics(request: Request) -> Response:
        """Prometheus text exposition of every fedge_controller_* metric."""
        token = state.settings.metrics_token
        if token is not None:
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            expected = token.get_secret_value().encode()
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
                raise Unauthorized("GET /metrics needs Authorization: Bearer <metrics_token>")
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
