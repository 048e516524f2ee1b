"""GET /metrics of the agent process as ``fedge-agent run`` builds it (``_agent_services``), scraped over
HTTP: served with the monitor off, inference latency/count by model version timed where the session
runs, the active model, deployment outcomes by status word, outbox depth and link state; with the monitor
on, one registry and no double-counted inference."""

from __future__ import annotations

import hashlib
import json
import time
import urllib.request
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge_agent.cli import _agent_services
from edge_agent.config import AgentSettings
from edge_agent.deploy.agent import DeployLoop
from edge_agent.identity import enroll
from edge_agent.link.client import ControllerLink
from edge_agent.link.outbox import Outbox
from edge_agent.metrics import DeviceMetrics, MeteredRuntime, MetricsService, metrics_url
from edge_agent.monitor.service import MonitorService
from edge_agent.runtime.hooks import InferenceService
from edge_agent.runtime.session import InferenceError
from fedge_protocol import DeploymentStatus
from tests.conftest import LiveServer
from tests.e2e.helpers import add_model, deploy, enrollment_token, upload_onnx
from tests.fixtures.services import free_port, wait_for

X = {"x": [[1.0, 2.0, 3.0, 4.0]]}
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def test_metrics_are_served_without_the_monitor_and_follow_deploys_inference_and_links(
    live: LiveServer, tmp_path: Path
) -> None:
    state_dir = tmp_path / "agent"
    with httpx.Client(base_url=live.url, timeout=30) as http:
        identity = enroll(live.url, enrollment_token(http), state_dir, facts={"cpu_count": 1})
        model_id, version = upload_onnx(http, add_model(2.0))
        settings = AgentSettings(
            state_dir=state_dir, monitor=False, mqtt=False, poll_interval=0.2, api_port=0
        )
        link = ControllerLink(identity)
        outbox = Outbox.in_state_dir(state_dir)
        services, _api = _agent_services(settings, identity, link, outbox)
        metrics_service = [s for s in services if isinstance(s, MetricsService)]
        loop = services[0]
        assert len(metrics_service) == 1 and isinstance(loop, DeployLoop)
        assert not [s for s in services if isinstance(s, MonitorService)]
        runtime = loop.agent.runtime
        assert isinstance(runtime, MeteredRuntime)
        metrics_service[0].start()
        loop.start()
        try:
            url = metrics_url(state_dir)
            assert url is not None and url.startswith("http://127.0.0.1:")
            before = scrape(url)
            assert value(before, "fedge_agent_controller_reachable") in (0.0, 1.0)
            assert value(before, "fedge_agent_mqtt_connected") == 0.0
            for status in ("succeeded", "failed-rolled-back", "rejected"):
                assert value(before, "fedge_agent_deployments_total", status=status) == 0.0

            deploy(http, model_id, version, [identity.device_id])
            wait_for(lambda: runtime.active is not None, 30, "the deployment")
            active = runtime.active
            assert active is not None
            for _ in range(3):
                assert runtime.infer(X)["y"] == [[3.0, 4.0, 5.0, 6.0]]
            with pytest.raises(InferenceError):
                runtime.infer({"x": [[1.0, 2.0]]})  # the session refuses the shape: counted apart

            labels = {"model_id": model_id, "version": str(version)}
            wait_for(
                lambda: value(scrape(url), "fedge_agent_deployments_total", status="succeeded") == 1.0,
                10,
                "the outcome",
            )
            got = scrape(url)
            assert value(got, "fedge_agent_inference_seconds_count", **labels) == 3.0  # warm-up not counted
            assert (value(got, "fedge_agent_inference_seconds_sum", **labels) or 0.0) > 0.0
            assert value(got, "fedge_agent_inference_errors_total", **labels) == 1.0
            assert value(got, "fedge_agent_active_model", sha256=active.sha256, **labels) == 1.0
            assert value(got, "fedge_agent_controller_reachable") == 1.0
            assert value(got, "fedge_agent_outbox_depth") == float(len(outbox))
            assert value(got, "fedge_agent_deployments_total", status="rejected") == 0.0

            # the controller goes away: the next poll fails, the gauge says so; the model keeps serving
            link.http.base_url = httpx.URL(f"http://127.0.0.1:{free_port()}")
            loop.agent.wake()
            wait_for(lambda: value(scrape(url), "fedge_agent_controller_reachable") == 0.0, 10, "link down")
            assert runtime.infer(X)["y"] == [[3.0, 4.0, 5.0, 6.0]]
            assert value(scrape(url), "fedge_agent_inference_seconds_count", **labels) == 4.0
        finally:
            loop.stop()
            metrics_service[0].stop()
            outbox.close()
            link.close()


def test_with_the_monitor_one_registry_serves_both_and_counts_each_inference_once(tmp_path: Path) -> None:
    metrics = DeviceMetrics()
    runtime = MeteredRuntime(None, metrics)
    model = tmp_path / "m.onnx"
    data = add_model(1.0)
    model.write_bytes(data)
    monitor = MonitorService(tmp_path / "state", runtime=runtime, metrics=metrics.metrics, isolate=False)
    inference = InferenceService(runtime)
    inference.observer = monitor.observer
    monitor.start()
    try:
        runtime.swap("m-7", 3, hashlib.sha256(data).hexdigest(), model)
        for _ in range(5):
            inference.handle({"inputs": {"x": np.ones((1, 4)).tolist()}})
        monitor.drain()
        url = json.loads((tmp_path / "state" / "monitor.json").read_text())["metrics_url"]
        deadline = time.monotonic() + 10
        while value(scrape(url), "fedge_agent_monitor_observations_total") != 5.0:
            assert time.monotonic() < deadline, "the monitor did not process the observations"
            time.sleep(0.05)
        got = scrape(url)
        labels = {"model_id": "m-7", "version": "3"}
        assert value(got, "fedge_agent_inference_seconds_count", **labels) == 5.0  # not 10
        assert value(got, "fedge_agent_deployments_total", status=DeploymentStatus.SUCCEEDED.value) == 0.0
        runtime.clear()
        assert not [k for k in scrape(url) if k[0] == "fedge_agent_active_model"]
    finally:
        monitor.stop()


def test_the_fl_clients_gauges_join_the_registry_when_fl_is_enabled(tmp_path: Path) -> None:
    from edge_agent.learning.supernode import SupernodeService

    metrics = DeviceMetrics()
    service = MetricsService(metrics, tmp_path)
    service.start()
    try:
        assert not [k for k in scrape(service.http.url) if k[0].startswith("fedge_agent_fl_")]  # FL off
        supernode = SupernodeService(tmp_path, None)  # not in a job: idle, no rounds
        metrics.fl_status = supernode.status
        got = scrape(service.http.url)
    finally:
        service.stop()
    state = str(supernode.status()["state"])
    assert value(got, "fedge_agent_fl_supernode_state", state=state) == 1.0
    assert value(got, "fedge_agent_fl_jobs") == 0.0
    assert value(got, "fedge_agent_fl_rounds_in_progress") == 0.0
    assert value(got, "fedge_agent_fl_supernode_recent_crashes") == 0.0
