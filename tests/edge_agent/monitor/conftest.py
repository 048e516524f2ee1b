"""A monitor service exercised through every metric it exports (for the HTTP and dashboard tests)."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.monitor.service import MonitorConfig, MonitorService

WIDTH = 3


@dataclass(frozen=True)
class ActiveModel:
    model_id: str
    version: int
    sha256: str
    session: Any = None


class StubRuntime:
    """Only ``active`` (the monitor reads which model is served)."""

    def __init__(self, active: ActiveModel | None) -> None:
        self.active = active


class BytesFetcher:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def download(self, path: str, dest: Path) -> str:
        dest.write_bytes(self.data)
        return hashlib.sha256(self.data).hexdigest()


def reference_npz(rng: np.random.Generator, rows: int = 600) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, x=rng.normal(0.0, 1.0, (rows, WIDTH)), feature_names=np.array(["load", "temp", "hour"]))
    return buf.getvalue()


def write_desired(state_dir: Path, data: bytes, model_id: str = "m-1", version: int = 2) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    reference = {
        "dataset_id": "ref-1",
        "sha256": hashlib.sha256(data).hexdigest(),
        "download": "/v1/devices/d/datasets/ref-1",
    }
    payload = {"type": "fedge.desired-state", "device_id": "d", "revision": 1, "model": {
        "model_id": model_id, "version": version, "kind": "onnx", "sha256": "00" * 32,
        "chain_record": "artifact", "download": "/x", "reference": reference}}  # fmt: skip
    (state_dir / "desired.json").write_text(json.dumps(payload))


@pytest.fixture(scope="package")
def exercised(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[MonitorService, list[dict[str, Any]]]]:
    """A started service (port 0) after inferences, two drift windows (quiet, shifted), labelled
    predictions with an error shift and a rejected observation; yields it with the telemetry it recorded."""
    rng = np.random.default_rng(11)
    state_dir = tmp_path_factory.mktemp("monitor-agent")
    data = reference_npz(rng)
    write_desired(state_dir, data)
    records: list[dict[str, Any]] = []

    def record(body: dict[str, Any]) -> int:
        records.append(body)
        return len(records)

    service = MonitorService(
        state_dir,
        runtime=StubRuntime(ActiveModel("m-1", 2, "ab" * 32)),  # type: ignore[arg-type]
        fetcher=BytesFetcher(data),
        record=record,
        config=MonitorConfig(window=64, error_window=32, calibration=32),
        queue_size=100_000,
        summary_seconds=3600,
        refresh_seconds=0.05,
    )
    service.start()
    try:
        service.refresh()  # fetch + load the reference now (the worker also does it)
        obs = service.observer
        for _ in range(64):
            obs.observe_inference(
                "m-1", 2, {"x": rng.normal(0, 1, (1, WIDTH)).tolist()}, {"y": [[0.0]]}, 0.001
            )
        for _ in range(64):
            obs.observe_inference(
                "m-1", 2, {"x": rng.normal(3, 1, (1, WIDTH)).tolist()}, {"y": [[0.0]]}, 0.002
            )
        for i in range(320):
            y = float(rng.normal(10, 1))
            obs.on_prediction(y, y - float(rng.normal(0, 0.5)) - (4.0 if i >= 160 else 0.0), None)
        obs.observe_inference("m-1", 2, {"x": [[1.0, 2.0]]}, {"y": [[0.0]]}, 0.001)  # wrong width: rejected
        wait_processed(service, 64 * 2 + 320 + 1)
        service.refresh()
        service.send_summaries()
        yield service, records
    finally:
        service.stop()


def wait_processed(service: MonitorService, count: int, timeout: float = 120.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = service.metrics.registry.get_sample_value("fedge_agent_monitor_observations_total")
        if value is not None and value >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"the monitor did not process {count} observations in {timeout}s")
