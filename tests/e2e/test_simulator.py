"""The fleet simulator against a live controller: enroll N in-process agents, roll out in waves, reuse
state dirs, and the ``python -m simulator.fleet`` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import httpx

from controller.state import ControllerState
from simulator.fleet import Fleet
from tests.conftest import ADMIN_TOKEN, LiveServer
from tests.e2e.helpers import add_model, upload_onnx

Live = tuple[LiveServer, ControllerState]


def test_fleet_enrolls_rolls_out_in_waves_and_serves(
    controller: Live, http: httpx.Client, tmp_path: Path
) -> None:
    url = controller[0].url
    model_id, version = upload_onnx(http, add_model(5.0))
    with Fleet(url, ADMIN_TOKEN, tmp_path, poll_interval=0.1, serve_api=True, labels={"sim": "t1"}) as fleet:
        agents = fleet.ensure(5)
        assert len({a.device_id for a in agents}) == 5
        assert all((a.state_dir / "device.key").stat().st_mode & 0o777 == 0o600 for a in agents)
        fleet.start()
        dep_id = fleet.deploy(model_id, version, waves=[0.4, 1.0])
        dep = fleet.wait_deployment(dep_id, timeout=60)
        assert dep.state == "succeeded", dep
        assert sorted({t.wave for t in dep.devices}) == [0, 1]
        fleet.wait_active(model_id, version, timeout=10)
        times = fleet.convergence(dep_id)
        assert all(t is not None for t in times.values())
        api = agents[3].api_url
        assert api is not None
        req = urllib.request.Request(
            f"{api}/v1/infer",
            data=json.dumps({"inputs": {"x": [[1, 2, 3, 4]]}}).encode(),
            headers={"Content-Type": "application/json"},
        )
        assert json.load(urllib.request.urlopen(req))["outputs"] == {"y": [[6.0, 7.0, 8.0, 9.0]]}
        ids = fleet.device_ids
        rows = {d.id: d for d in fleet.client.devices()}
        assert all(rows[i].labels["sim"] == "t1" for i in ids)

    # a second fleet on the same state root reuses the identities, even after the controller "moved"
    meta_path = tmp_path / "agent-0000" / "identity.json"
    meta = json.loads(meta_path.read_text())
    meta["api_url"] = "http://127.0.0.1:1"
    meta_path.write_text(json.dumps(meta))
    with Fleet(url, ADMIN_TOKEN, tmp_path, poll_interval=0.1) as again:
        again.ensure(6)
        assert again.device_ids[:5] == ids and again.device_ids[5] not in ids
        assert again.agents[0].active == (model_id, version)  # served again from its slot at start-up
        assert json.loads(meta_path.read_text())["api_url"] == url


def test_fleet_command_deploys_and_reports(controller: Live, http: httpx.Client, tmp_path: Path) -> None:
    url = controller[0].url
    model_id, version = upload_onnx(http, add_model(2.0))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "simulator.fleet",
            "--controller",
            url,
            "--agents",
            "3",
            "--poll-interval",
            "0.1",
            "--deploy",
            model_id,
            "--version",
            str(version),
            "--waves",
            "0.34,1.0",
            "--timeout",
            "60",
        ],
        env={**os.environ, "FEDGE_TOKEN": ADMIN_TOKEN},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert lines[0] == {**lines[0], "event": "enrolled", "agents": 3}
    dep = next(x for x in lines if x["event"] == "deployment")
    assert (dep["state"], dep["succeeded"]) == ("succeeded", 3)
    agents = [x for x in lines if x["event"] == "agent"]
    assert [a["active"] for a in agents] == [[model_id, version]] * 3


def test_fleet_over_mqtt_applies_a_push_and_reports_through_the_outbox(
    controller: Live, http: httpx.Client, tmp_path: Path
) -> None:
    """With ``mqtt=True`` the agents run as ``fedge-agent run`` wires them: the pushed desired state
    starts the apply (the hour-long poll interval never comes round) and the status reports go out through
    the outbox over MQTT."""
    url = controller[0].url
    model_id, version = upload_onnx(http, add_model(3.0))
    with Fleet(url, ADMIN_TOKEN, tmp_path, poll_interval=3600, mqtt=True) as fleet:
        agents = fleet.ensure(3)
        assert all(a.mqtt is not None for a in agents)
        fleet.start()
        fleet.wait_connected(timeout=30)
        dep_id = fleet.deploy(model_id, version)
        dep = fleet.wait_deployment(dep_id, timeout=60)
        assert dep.state == "succeeded", dep
        fleet.wait_active(model_id, version, timeout=10)
        assert all(t is not None for t in fleet.convergence(dep_id).values())
        assert all(a.agent.outbox is not None and not a.agent.outbox.pending() for a in agents)
        assert all(a.errors == 0 for a in agents)


def test_fleet_command_streams_outcomes_until_its_stdin_closes(
    controller: Live, http: httpx.Client, tmp_path: Path
) -> None:
    """``--stream`` (a worker of bench/rollout.py): ready with the device ids, then each outcome as it
    happens, then stopped (errors, peak RSS) once stdin closes."""
    url = controller[0].url
    model_id, version = upload_onnx(http, add_model(4.0))
    argv = [sys.executable, "-m", "simulator.fleet", "--controller", url, "--agents", "2", "--mqtt",
            "--poll-interval", "3600", "--state-root", str(tmp_path), "--stream"]  # fmt: skip
    with subprocess.Popen(
        argv,
        env={**os.environ, "FEDGE_TOKEN": ADMIN_TOKEN},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        assert (ready["event"], len(ready["device_ids"]), ready["connected"]) == ("ready", 2, 2)
        with Fleet(url, ADMIN_TOKEN, tmp_path / "admin") as admin:  # only its admin client is used
            dep_id = admin.client.deploy(model_id, version, device_ids=ready["device_ids"]).deployment_id
        outcomes = [json.loads(proc.stdout.readline()) for _ in range(2)]
        assert {o["device_id"] for o in outcomes} == set(ready["device_ids"])
        assert all(
            (o["event"], o["state"], o["deployment_id"], o["version"])
            == ("outcome", "succeeded", dep_id, version)
            for o in outcomes
        )
        proc.stdin.close()
        stopped = json.loads(proc.stdout.readline())
        assert stopped["event"] == "stopped" and stopped["errors"] == 0 and stopped["rss_mb"] > 0
        assert proc.wait(60) == 0
