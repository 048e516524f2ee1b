"""The compose stack (packaging/compose/compose.yaml) on podman, end to end: `stack.py up` brings up
PostgreSQL, SeaweedFS, anvil, Mosquitto (mTLS), the controller and Prometheus; a model registered over the
API is deployed to an enrolled agent (host .venv) that answers an inference; after restarting PostgreSQL
and the controller the model is still listed and its chain record still verifies; Prometheus scrapes the
controller (`up == 1`); a headless Chromium screenshot of Prometheus' graph page goes to
docs/img/stack-prometheus.png. Marker ``stack``: `make test-stack` (deselected otherwise)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from tests.e2e.helpers import add_model, upload_onnx
from tests.fixtures.dashboards import DASHBOARDS, panel_queries
from tests.fixtures.services import free_ports

ROOT = Path(__file__).resolve().parents[2]
STACK = [sys.executable, str(ROOT / "packaging" / "compose" / "stack.py")]
PROJECT = "fedge-test"
# loopback ports free at collection (SeaweedFS also takes S3+1..S3+4 and +10000: a fixed base)
_free = free_ports(7)
PORTS = {
    "FEDGE_STACK_PG_PORT": _free[0],
    "FEDGE_STACK_S3_PORT": 38333,
    "FEDGE_STACK_CHAIN_PORT": _free[1],
    "FEDGE_STACK_MQTT_PORT": _free[2],
    "FEDGE_STACK_CONTROLLER_PORT": _free[3],
    "FEDGE_STACK_PROMETHEUS_PORT": _free[4],
}
AGENT_API_PORT = _free[5]
AGENT_METRICS_PORT = _free[6]
TOKEN = "fedge_stack-test-token-0123456789abcdef"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
CONTROLLER = f"http://127.0.0.1:{PORTS['FEDGE_STACK_CONTROLLER_PORT']}"
PROMETHEUS = f"http://127.0.0.1:{PORTS['FEDGE_STACK_PROMETHEUS_PORT']}"
SCREENSHOT = ROOT / "docs" / "img" / "stack-prometheus.png"

pytestmark = pytest.mark.stack
T = TypeVar("T")


def _env() -> dict[str, str]:
    env = {**os.environ, **{k: str(v) for k, v in PORTS.items()}}
    env.update(
        FEDGE_STACK_PROJECT=PROJECT,
        FEDGE_STACK_ADMIN_TOKEN=TOKEN,
        FEDGE_STACK_AGENT_TARGETS=f"127.0.0.1:{AGENT_METRICS_PORT}",
        FEDGE_STACK_RUN_DIR=str(ROOT / ".fedge" / "stack-test"),
    )
    return env


def _stack(*args: str) -> None:
    done = subprocess.run([*STACK, *args], env=_env(), capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _cli(module: str, *args: str) -> str:
    env = {**os.environ, "FEDGE_URL": CONTROLLER, "FEDGE_TOKEN": TOKEN, "COLUMNS": "200"}
    done = subprocess.run(
        [sys.executable, "-m", module, *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def stack() -> Iterator[None]:
    _stack("down", "--volumes")
    try:
        _stack("up")
        yield
    finally:
        _stack("down", "--volumes")


def _until(check: Callable[[], T], what: str, timeout: float = 90.0) -> T:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            got = check()
            if got:
                return got
        except (httpx.HTTPError, KeyError, IndexError, ValueError) as exc:
            last = exc
        time.sleep(1)
    raise AssertionError(f"{what} did not happen (last: {last!r})")


def _prom_query(expr: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{PROMETHEUS}/api/v1/query", params={"query": expr}, timeout=5)
    r.raise_for_status()
    return list(r.json()["data"]["result"])


def _panel_queries() -> list[tuple[str, str, str]]:
    """(dashboard, panel title, PromQL) of every panel target in packaging/grafana/, with the dashboards'
    variables ($instance, $model_id, $version) set to "All", as Grafana sends them."""
    found: list[tuple[str, str, str]] = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        for title, expr in panel_queries(json.loads(path.read_text())):
            for var in ("$instance", "$model_id", "$version"):
                expr = expr.replace(var, ".*")
            found.append((path.stem, title, expr))
    return found


def _panels_with_data() -> dict[str, set[str]]:
    """Evaluate every dashboard panel's query on the stack's Prometheus (each must be valid PromQL there)
    and name the panels that have data, by dashboard."""
    shown: dict[str, set[str]] = {}
    for dashboard, title, expr in _panel_queries():
        r = httpx.get(f"{PROMETHEUS}/api/v1/query", params={"query": expr}, timeout=10)
        assert r.status_code == 200 and r.json()["status"] == "success", (dashboard, title, expr, r.text)
        if r.json()["data"]["result"]:
            shown.setdefault(dashboard, set()).add(title)
    return shown


def _chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        apt = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
        subprocess.run(apt, env=env, check=True, timeout=900)
        found = shutil.which("chromium")
    assert found is not None
    return found


def _screenshot(tmp: Path) -> None:
    # two graphs: the controller's requests and the agent's inferences, both scraped by the stack
    query = urllib.parse.urlencode(
        {
            "g0.expr": "sum by (route, status) (fedge_controller_http_requests_total)",
            "g0.tab": "0",
            "g0.range_input": "1m",
            "g1.expr": "fedge_agent_inference_seconds_count",
            "g1.tab": "0",
            "g1.range_input": "1m",
        }
    )
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    out = tmp / "shot.png"
    subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp / 'profile'}",
         "--window-size=1280,1950", "--virtual-time-budget=8000", f"--screenshot={out}", f"{PROMETHEUS}/graph?{query}"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    assert out.stat().st_size > 10_000
    shutil.copyfile(out, SCREENSHOT)


def test_stack_deploy_infer_restart_and_scrape(stack: None, tmp_path: Path) -> None:
    http = httpx.Client(base_url=CONTROLLER, timeout=30)
    model_id, version = upload_onnx(http, add_model(3.0), headers=ADMIN)
    token = _cli("controller.user_cli", "devices", "token", "--labels", "site=stack").strip()
    state_dir = tmp_path / "agent"
    enrolled = _cli(
        "edge_agent.cli",
        "enroll",
        "--controller",
        CONTROLLER,
        "--token",
        token,
        "--state-dir",
        str(state_dir),
    )
    device_id = json.loads(enrolled)["device_id"]
    agent_env = {**os.environ, "FEDGE_AGENT_METRICS_PORT": str(AGENT_METRICS_PORT)}
    agent = subprocess.Popen(
        [sys.executable, "-m", "edge_agent.cli", "run", "--state-dir", str(state_dir),
         "--api-port", str(AGENT_API_PORT)],
        env=agent_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        result = json.loads(
            _cli("controller.user_cli", "deploy", model_id, "--version", str(version), "--selector", "site=stack",
                 "--watch", "--json")
        )  # fmt: skip
        assert result["state"] == "succeeded"
        assert [(t["device_id"], t["state"]) for t in result["devices"]] == [(device_id, "succeeded")]
        infer = _until(
            lambda: httpx.post(
                f"http://127.0.0.1:{AGENT_API_PORT}/v1/infer",
                json={"inputs": {"x": [[0, 1, 2, 3]]}},
                timeout=5,
            ).json(),
            "inference on the agent",
        )
        assert infer["outputs"] == {"y": [[3.0, 4.0, 5.0, 6.0]]}

        before = http.get(f"/v1/models/{model_id}/provenance", headers=ADMIN)
        assert before.status_code == 200 and before.json()["verified"] is True, before.text

        _stack("restart", "postgres")
        _stack("restart", "controller")

        listed = http.get("/v1/models", headers=ADMIN)
        assert listed.status_code == 200, listed.text
        assert model_id in json.dumps(listed.json())
        after = http.get(f"/v1/models/{model_id}/provenance", headers=ADMIN)
        assert after.status_code == 200 and after.json()["verified"] is True, after.text
        assert after.json()["chain"] == before.json()["chain"]

        up = _until(
            lambda: [s for s in _prom_query('up{job="fedge-controller"}') if s["value"][1] == "1"],
            "Prometheus scraping the controller",
        )
        assert len(up) == 1
        _until(lambda: _prom_query("fedge_controller_http_requests_total"), "a fedge metric in Prometheus")
        # the agent's own /metrics (loopback, its metrics port) is scraped too: the model it serves and
        # the inference it answered, labelled with that model version
        agent_up = _until(
            lambda: [s for s in _prom_query('up{job="fedge-agent"}') if s["value"][1] == "1"],
            "Prometheus scraping the agent",
        )
        assert len(agent_up) == 1
        served = _until(
            lambda: _prom_query(f'fedge_agent_active_model{{model_id="{model_id}"}} == 1'),
            "the agent's model",
        )
        assert [s["metric"]["version"] for s in served] == [str(version)]
        counted = _until(
            lambda: _prom_query(f'fedge_agent_inference_seconds_count{{model_id="{model_id}"}} >= 1'),
            "the agent's inference count",
        )
        assert counted[0]["metric"]["version"] == str(version)
        # what the Grafana dashboards would show: every panel query is valid PromQL on this Prometheus,
        # and the controller, fleet and agent dashboards have data in their core panels
        core = {
            "controller": {"Request rate by route", "Total request rate", "p95 latency by route"},
            "fleet": {"Devices online", "Active devices", "Deployments by state"},
            "agent": {"Active model", "Inferences and refused inferences per second", "Outbox depth"},
        }

        def core_panels_show_data() -> dict[str, set[str]]:
            got = _panels_with_data()
            return got if all(titles <= got.get(d, set()) for d, titles in core.items()) else {}

        shown = _until(core_panels_show_data, "data in the dashboards' core panels")
        print({d: sorted(titles) for d, titles in shown.items()})
        _screenshot(tmp_path)
        assert SCREENSHOT.stat().st_size < 500_000
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(20)
