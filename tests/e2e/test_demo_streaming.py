"""The demo's streaming run (scripts/demo_streaming.py) against a live controller: a smart meter over MQTT,
the agent's online learner, a +20 % level shift, and the drift alarm listed by the controller."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from controller.client import FedgeClient
from tests.conftest import ADMIN_TOKEN, LiveServer

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "demo_streaming.py"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("demo_streaming", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_shift_is_detected_without_false_alarms_and_reaches_the_controller(
    live: LiveServer, tmp_path: Path
) -> None:
    numbers = _script().streaming(live.url, ADMIN_TOKEN, tmp_path)

    assert numbers["false_alarms"] == 0 and numbers["shift_window"] >= 10
    assert numbers["windows_to_detect"] is not None and 1 <= numbers["windows_to_detect"] <= 3
    assert numbers["alarms_at_controller"] >= 1 and numbers["detectors"] == ["evidently"]
    assert 0 < numbers["mape_before_pct"] < 100 and 0 < numbers["mape_after_pct"] < 100
    with FedgeClient(live.url, ADMIN_TOKEN) as fc:
        meters = [d for d in fc.devices() if d.labels.get("role") == "meter-gateway"]
        assert len(meters) == 1
        events = fc.device_events(meters[0].id)
    assert events.items[0].model_id == "online/meter-w4" and events.items[0].body["drift_share"] >= 0.5
    assert Path(numbers["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
