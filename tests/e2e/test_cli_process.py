"""The real processes: ``fedge devices token``, ``fedge-agent enroll``, ``fedge-agent run`` (polling a live
controller, serving the local API) and ``fedge deploy --watch``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import httpx

from controller.state import ControllerState
from tests.conftest import ADMIN_TOKEN, LiveServer
from tests.e2e.helpers import add_model, upload_onnx
from tests.fixtures.services import free_port

Live = tuple[LiveServer, ControllerState]


def _run(module: str, *args: str, url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FEDGE_URL": url, "FEDGE_TOKEN": ADMIN_TOKEN, "COLUMNS": "200"}
    done = subprocess.run(
        [sys.executable, "-m", module, *args], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done


def test_enroll_run_deploy_and_infer_with_the_real_commands(
    controller: Live, http: httpx.Client, tmp_path: Path
) -> None:
    url = controller[0].url
    token = _run("controller.user_cli", "devices", "token", "--labels", "site=lab", url=url).stdout.strip()
    state_dir = tmp_path / "agent"
    enrolled = _run(
        "edge_agent.cli",
        "enroll",
        "--controller",
        url,
        "--token",
        token,
        "--state-dir",
        str(state_dir),
        "--label",
        "floor=2",
        url=url,
    )
    device_id = json.loads(enrolled.stdout)["device_id"]
    model_id, version = upload_onnx(http, add_model(3.0))
    port = free_port()
    agent = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edge_agent.cli",
            "run",
            "--state-dir",
            str(state_dir),
            "--api-port",
            str(port),
            "--poll-interval",
            "0.2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deployed = _run(
            "controller.user_cli",
            "deploy",
            model_id,
            "--version",
            str(version),
            "--selector",
            "site=lab",
            "--watch",
            "--json",
            url=url,
        )
        result = json.loads(deployed.stdout)
        assert result["state"] == "succeeded"
        assert [(t["device_id"], t["state"]) for t in result["devices"]] == [(device_id, "succeeded")]
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                info = json.load(urllib.request.urlopen(f"{base}/v1/model", timeout=2))
                break
            except OSError:
                assert time.monotonic() < deadline, "local API never served the model"
                time.sleep(0.1)
        assert (info["model_id"], info["version"]) == (model_id, version)
        req = urllib.request.Request(
            f"{base}/v1/infer", data=json.dumps({"inputs": {"x": [[0, 1, 2, 3]]}}).encode()
        )
        assert json.load(urllib.request.urlopen(req, timeout=5))["outputs"] == {"y": [[3.0, 4.0, 5.0, 6.0]]}
        rows = json.loads(_run("controller.user_cli", "devices", "list", "--json", url=url).stdout)
        row = next(r for r in rows if r["id"] == device_id)
        assert row["online"] is True and row["labels"] == {"site": "lab", "floor": "2"}
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(15)
    assert agent.returncode == 0, agent.stdout.read() if agent.stdout else ""
    status = json.loads(_run("edge_agent.cli", "status", "--state-dir", str(state_dir), url=url).stdout)
    assert status["current"]["version"] == version and status["current"]["confirmed"] is True


def test_fedge_agent_run_exits_non_zero_with_one_line_when_a_service_cannot_start(
    controller: Live, http: httpx.Client, tmp_path: Path
) -> None:
    import socket

    from tests.e2e.helpers import enrolled_device

    dev = enrolled_device(controller[0].url, http, tmp_path / "agent")
    dev.link.close()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        args = ["run", "--state-dir", str(dev.state_dir), "--api-port", str(port), "--poll-interval", "60"]
        done = subprocess.run(
            [sys.executable, "-m", "edge_agent.cli", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: service 'local-api' did not start: OSError: [Errno 98] Address already in use"]
    assert "Traceback" not in done.stderr
