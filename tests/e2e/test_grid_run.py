"""Grid policies in the registry and grid runs on the agent, started from the controller.

A tiny PPO policy is exported (policy.json embedded in the ONNX), registered through the SDK (chain
records), and run by real agents against a live controller: as a controller command delivered over MQTT
(embedded broker) or HTTP, and as ``fedge-agent grid run`` on the device."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from controller.client import FedgeClient
from controller.state import ControllerState
from edge_agent.cli import app as agent_cli
from edge_agent.grid import CommandRunner, _grid_model, grid_available, run_command
from edge_agent.link.signed import SignatureInvalid, verify_command
from fedge_protocol import DocumentType
from simulator.grid.publish import RegisteredPolicy, register_policy
from tests.conftest import ADMIN_TOKEN, LiveServer
from tests.e2e.broker_fixtures import MqttDevice, mqtt_device
from tests.e2e.helpers import ADMIN, add_model, enrolled_device, upload_onnx
from tests.fixtures.services import wait_for
from tests.simulator.grid.tiny import TINY_ACTIONS_PER_DAY, tiny_policy

Live = tuple[LiveServer, ControllerState]


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("grid-policy")
    tiny_policy(_grid_model(), folder)
    return folder


@pytest.fixture(scope="module")
def registered(controller: Live, policy_dir: Path) -> RegisteredPolicy:
    with FedgeClient(controller[0].url, ADMIN_TOKEN) as fc:
        return register_policy(fc, policy_dir, model=_grid_model())


@pytest.fixture(scope="module")
def days() -> str:
    test_days = [d for d in _grid_model().test_days() if d >= 152]
    return f"{test_days[0]},{test_days[1]}"


@pytest.fixture
def device(controller: Live, http: httpx.Client, tmp_path: Path) -> Iterator[MqttDevice]:
    """An agent with an outbox, the embedded broker and a command runner, its loop running."""
    dev = mqtt_device(controller[0].url, http, tmp_path / "dev")
    dev.agent.commands = CommandRunner(dev.state_dir, dev.agent.link, dev.agent.record_telemetry)
    dev.mqtt.on_command = dev.agent.receive_command
    dev.agent.commands.start()
    dev.run(poll_interval=60)  # commands arrive by push long before the next poll
    yield dev
    dev.agent.commands.stop()
    dev.close()


def _command(http: httpx.Client, device_id: str, **body: Any) -> httpx.Response:
    return http.post(f"/v1/devices/{device_id}/commands", headers=ADMIN, json={"kind": "grid-run", **body})


def test_a_registered_policy_has_chain_records_and_a_self_describing_onnx(
    controller: Live, http: httpx.Client, registered: RegisteredPolicy, policy_dir: Path
) -> None:
    meta = http.get(f"/v1/models/{registered.model_id}/metadata", headers=ADMIN).json()
    assert meta["training"]["framework"] == "fedge-grid-policy"
    kinds = {v["version"]: v["kind"] for v in meta["versions"]}
    assert kinds == {registered.trained_version: "trained", registered.onnx_version: "onnx"}
    prov = http.get(f"/v1/models/{registered.model_id}/provenance", headers=ADMIN).json()
    assert prov["verified"] is True
    onnx_check = next(v for v in prov["versions"] if "onnx" in v["subject"])
    assert onnx_check["sha256_chain"] == registered.sha256 == onnx_check["sha256_recomputed"]
    assert (policy_dir / "policy.onnx").read_bytes()  # the registered bytes are the folder's file

    commands = controller[1].commands
    assert commands is not None
    mv = controller[1].registry.resolve_version(registered.model_id, registered.onnx_version)
    info = commands.grid_policy(mv)
    assert info["actions_per_day"] == TINY_ACTIONS_PER_DAY and info["backend"] == "sb3"

    with FedgeClient(controller[0].url, ADMIN_TOKEN) as fc:  # the training-days dataset is reused
        again = register_policy(fc, policy_dir, model=_grid_model())
    assert again.dataset_id == registered.dataset_id and again.model_id != registered.model_id


def test_a_controller_command_runs_the_policy_on_the_agent_and_the_results_come_back(
    controller: Live, http: httpx.Client, registered: RegisteredPolicy, device: MqttDevice, days: str
) -> None:
    messaging = controller[1].messaging
    assert messaging is not None
    delivered: list[tuple[str, int, str]] = []  # (device, seq, leaf) as the controller accepted them
    messaging.observe(lambda device_id, m: delivered.append((device_id, m.seq, m.kind)))
    r = _command(http, device.id, model=registered.model_id, days=days)
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["state"] == "queued" and created["version"] == registered.onnx_version

    with FedgeClient(controller[0].url, ADMIN_TOKEN) as fc:
        done = fc.wait_command(device.id, created["id"], timeout=120, poll=0.3)
        assert done.state == "succeeded", done
        telemetry = fc.telemetry(device.id, command_id=created["id"], type="grid.day")

    result = done.result
    assert result is not None
    assert result["days"] == 2 and result["sha256"] == registered.sha256
    assert result["gain"] == pytest.approx(result["mean_score_after"] / result["mean_score_before"] - 1)
    records = telemetry.items
    assert [rec.body["day"] for rec in records] == [int(d) for d in days.split(",")]
    for rec in records:
        body = rec.body
        assert len(body["shifts"]) == TINY_ACTIONS_PER_DAY
        assert set(body["shifts"][0]) == {"load", "hour", "level", "fraction", "direction", "noop"}
        assert body["shifts"][0]["direction"] in ("later", "earlier")
        assert body["shifted"] + body["noops"] == TINY_ACTIONS_PER_DAY
        for side in ("before", "after"):
            assert set(body[side]) == {"scr", "ssr", "score"}
            assert body[side]["score"] == pytest.approx((body[side]["scr"] + body[side]["ssr"]) / 2)
    assert done.started_at and done.finished_at

    # delivered over MQTT (telemetry topic), from the outbox
    wait_for(lambda: len(device.outbox) == 0, 10, "outbox drained")
    seqs = {rec.seq for rec in records}
    assert seqs <= {seq for d, seq, kind in delivered if d == device.id and kind == "telemetry"}
    listed = http.get(f"/v1/devices/{device.id}/commands", headers=ADMIN).json()
    assert [c["id"] for c in listed["items"]][:1] == [created["id"]]

    # delivered once: a later poll does not run it again
    assert device.agent.link.pending_commands() == []
    assert device.agent.commands is not None and not device.agent.commands.submit(
        verify_command(
            controller[1].commands.signed(controller[1].commands.get(device.id, created["id"])),  # type: ignore[union-attr]
            device.identity.ca_certificate,
            device.id,
        )
    )


def test_a_queued_command_reaches_an_agent_without_broker_by_http_poll(
    controller: Live, http: httpx.Client, registered: RegisteredPolicy, tmp_path: Path, days: str
) -> None:
    from edge_agent.link.outbox import Outbox

    dev = enrolled_device(controller[0].url, http, tmp_path / "poll")
    dev.agent.outbox = Outbox.in_state_dir(dev.state_dir)
    dev.agent.commands = CommandRunner(dev.state_dir, dev.link, dev.agent.record_telemetry)
    dev.agent.commands.start()
    try:
        cid = _command(http, dev.id, model=registered.model_id, days=days.split(",")[0]).json()["id"]
        dev.agent.poll_commands()
        wait_for(dev.agent.commands.idle.is_set, 60, "the command ran")
        dev.agent.flush()  # no broker: telemetry over HTTP

        cmd = http.get(f"/v1/devices/{dev.id}/commands/{cid}", headers=ADMIN).json()
        assert cmd["state"] == "succeeded", cmd
        assert len(dev.agent.outbox) == 0
        seen = http.get(f"/v1/devices/{dev.id}/telemetry", headers=ADMIN, params={"command_id": cid}).json()
        assert [rec["body"]["type"] for rec in seen["items"]] == ["command", "grid.day", "command"]
    finally:
        dev.agent.commands.stop()
        dev.agent.outbox.close()
        dev.link.close()


def test_fedge_agent_grid_run_on_the_device(
    controller: Live, http: httpx.Client, registered: RegisteredPolicy, tmp_path: Path, days: str
) -> None:
    dev = enrolled_device(controller[0].url, http, tmp_path / "cli")
    dev.link.close()
    day = days.split(",")[1]
    ref = f"{registered.model_id}@{registered.onnx_version}"

    out = CliRunner().invoke(
        agent_cli, ["grid", "run", "--state-dir", str(dev.state_dir), "--policy", ref, "--days", day]
    )

    assert out.exit_code == 0, out.output
    summary = json.loads(out.output.strip().splitlines()[-1])
    assert summary["days"] == 1 and summary["version"] == registered.onnx_version
    listed = http.get(f"/v1/devices/{dev.id}/commands", headers=ADMIN).json()["items"]
    assert len(listed) == 1 and listed[0]["state"] == "succeeded"
    assert listed[0]["created_by"] == dev.id
    assert listed[0]["result"]["mean_score_after"] == pytest.approx(summary["mean_score_after"])
    assert (
        dev.state_dir / "grid" / registered.model_id / str(registered.onnx_version) / "policy.onnx"
    ).is_file()

    bad = CliRunner().invoke(
        agent_cli, ["grid", "run", "--state-dir", str(dev.state_dir), "--policy", ref, "--days", "400"]
    )
    assert bad.exit_code == 1 and "day 400 is outside 0..365" in bad.output


def test_the_agent_refuses_a_policy_whose_bytes_differ_from_the_signed_chain_hash(
    controller: Live, http: httpx.Client, registered: RegisteredPolicy, tmp_path: Path
) -> None:
    dev = enrolled_device(controller[0].url, http, tmp_path / "sig")
    commands = controller[1].commands
    assert commands is not None
    created = _command(http, dev.id, model=registered.model_id, days="test").json()
    payload = commands.document(commands.get(dev.id, created["id"]))
    payload["model"]["sha256"] = "ab" * 32  # a signed record that does not match the bytes served
    verified = verify_command(
        commands.fleet.ca.sign_document(payload, DocumentType.COMMAND), dev.identity.ca_certificate, dev.id
    )
    records: list[dict[str, Any]] = []

    summary = run_command(
        verified, dev.link, dev.state_dir, lambda body: records.append(body) or len(records)
    )

    assert summary is None
    assert records[-1]["state"] == "failed"
    assert "differs from the signed chain record" in records[-1]["error"]
    assert not any((dev.state_dir / "grid").rglob("policy.onnx*"))
    dev.link.close()


def test_a_tampered_stored_policy_is_refused(
    controller: Live, http: httpx.Client, registered: RegisteredPolicy, policy_dir: Path, tmp_path: Path
) -> None:
    dev = enrolled_device(controller[0].url, http, tmp_path / "tamper")
    state = controller[1]
    with FedgeClient(controller[0].url, ADMIN_TOKEN) as fc:  # a model of its own: others stay intact
        own = register_policy(fc, policy_dir, model=_grid_model(), dataset_id=registered.dataset_id)
    mv = state.registry.resolve_version(own.model_id, own.onnx_version)
    path = next(Path(state.settings.data_dir).rglob(mv.object_key))
    path.write_bytes(path.read_bytes()[:-1] + b"\0")  # the store now differs from the chain record

    r = _command(http, dev.id, model=own.model_id)

    assert r.status_code == 409, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert "integrity" in r.json()["title"].lower()
    dev.link.close()


def test_forged_or_misaddressed_commands_are_refused(
    controller: Live, http: httpx.Client, registered: RegisteredPolicy, tmp_path: Path
) -> None:
    from controller.fleet.ca import DeviceCA

    a = enrolled_device(controller[0].url, http, tmp_path / "a")
    b = enrolled_device(controller[0].url, http, tmp_path / "b")
    commands = controller[1].commands
    assert commands is not None
    created = _command(http, a.id, model=registered.model_id).json()
    payload = commands.document(commands.get(a.id, created["id"]))
    ca = commands.fleet.ca

    with pytest.raises(SignatureInvalid, match="does not verify"):
        verify_command(ca.sign_document(payload, DocumentType.DESIRED_STATE), a.identity.ca_certificate, a.id)
    with pytest.raises(SignatureInvalid, match="for device"):
        verify_command(ca.sign_document(payload, DocumentType.COMMAND), b.identity.ca_certificate, b.id)
    other = DeviceCA.load_or_create(tmp_path / "other-ca")
    with pytest.raises(SignatureInvalid, match="does not verify"):
        verify_command(other.sign_document(payload, DocumentType.COMMAND), a.identity.ca_certificate, a.id)

    # b may neither read a's commands nor download a version that names only a
    r = b.link.http.get(f"/v1/devices/{a.id}/commands/pending")
    assert r.status_code == 403
    r = b.link.http.get(f"/v1/devices/{b.id}/models/{registered.model_id}/versions/{registered.onnx_version}")
    assert r.status_code == 403 and "nor named by a command" in r.json()["detail"]
    a.link.close()
    b.link.close()


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"model": "00000000-0000-0000-0000-000000000000"}, 404, "not found"),
        ({"version": 99}, 404, "has no version 99"),
        ({"days": "abc"}, 422, "not a day number"),
        ({"days": "400"}, 422, "day 400 is outside 0..365"),
        ({"days": "200-150"}, 422, "runs backwards"),
        ({"days": []}, 422, "days"),
        ({"kind": "reboot"}, 422, "kind"),
    ],
)
def test_bad_command_input_is_a_precise_problem(
    controller: Live,
    http: httpx.Client,
    registered: RegisteredPolicy,
    tmp_path: Path,
    body: dict[str, Any],
    status: int,
    needle: str,
) -> None:
    dev = enrolled_device(controller[0].url, http, tmp_path / "bad")
    payload = {"kind": "grid-run", "model_id": registered.model_id, **body}
    if "model" in body:
        payload.pop("model_id")

    r = http.post(f"/v1/devices/{dev.id}/commands", headers=ADMIN, json=payload)

    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert needle in json.dumps(r.json())
    dev.link.close()


def test_models_that_are_not_grid_policies_and_unknown_devices_are_refused(
    controller: Live, http: httpx.Client, registered: RegisteredPolicy, tmp_path: Path
) -> None:
    dev = enrolled_device(controller[0].url, http, tmp_path / "x")
    plain_model, plain_version = upload_onnx(http, add_model(1.0))

    r = _command(http, dev.id, model=plain_model, version=plain_version)
    assert r.status_code == 422 and "is not a grid policy" in r.json()["detail"]
    r = _command(http, dev.id, model=registered.model_id, version=registered.trained_version)
    assert r.status_code == 422 and "is a trained artifact" in r.json()["detail"]
    r = _command(http, "00000000-0000-0000-0000-000000000000", model=registered.model_id)
    assert r.status_code == 404 and "device" in r.json()["detail"]
    r = http.get(f"/v1/devices/{dev.id}/commands/00000000-0000-0000-0000-000000000000", headers=ADMIN)
    assert r.status_code == 404
    r = http.post(f"/v1/devices/{dev.id}/telemetry", headers=ADMIN, json={"seq": 1, "body": {}})
    assert r.status_code == 403  # only the device itself reports
    dev.link.close()


def test_without_the_grid_extra_the_agent_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "pandapower", None)
    hint = grid_available()
    assert hint is not None and "pip install 'fedge[agent,grid]'" in hint

    out = CliRunner().invoke(agent_cli, ["grid", "run", "--state-dir", "/nonexistent", "--policy", "m@1"])
    assert out.exit_code == 1 and "pip install 'fedge[agent,grid]'" in out.output


def test_fedge_cli_registers_a_policy_and_starts_a_grid_run_on_a_device(
    controller: Live, policy_dir: Path, registered: RegisteredPolicy, device: MqttDevice, days: str
) -> None:
    from controller import user_cli

    if not any(group.name == "grid" for group in user_cli.app.registered_groups):
        user_cli._mount_optional()
    runner = CliRunner()
    base = ["--controller", controller[0].url, "--token", ADMIN_TOKEN]

    reg = runner.invoke(
        user_cli.app,
        [
            *base,
            "grid",
            "register",
            "--policy",
            str(policy_dir),
            "--dataset",
            registered.dataset_id,
            "--json",
        ],
    )
    assert reg.exit_code == 0, reg.output
    model_id = json.loads(reg.output)["model_id"]

    day = days.split(",")[0]
    run = runner.invoke(
        user_cli.app,
        [*base, "devices", "grid-run", device.id, "--model", model_id, "--days", day, "--watch", "--json"],
    )
    assert run.exit_code == 0, run.output
    command = json.loads(run.output[run.output.index("{") :])
    assert command["state"] == "succeeded" and command["result"]["days"] == 1

    shown = runner.invoke(
        user_cli.app, [*base, "devices", "telemetry", device.id, "--command", command["id"]]
    )
    assert shown.exit_code == 0, shown.output
    assert f"day {day}: (SCR+SSR)/2" in shown.output

    bad = runner.invoke(
        user_cli.app, [*base, "devices", "grid-run", device.id, "--model", model_id, "--days", "x"]
    )
    assert bad.exit_code == 1 and "422" in bad.output


def test_telemetry_keeps_the_newest_records_per_device(
    controller: Live, http: httpx.Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commands = controller[1].commands
    assert commands is not None
    monkeypatch.setattr(commands, "keep_per_device", 3)
    dev = enrolled_device(controller[0].url, http, tmp_path / "t")
    other = enrolled_device(controller[0].url, http, tmp_path / "u")
    other.link.send_telemetry(1, {"type": "probe", "n": 0})

    for seq in range(1, 6):
        dev.link.send_telemetry(seq, {"type": "probe", "n": seq})
    dev.link.send_telemetry(1, {"type": "probe", "n": 1})  # a late redelivery of a pruned record

    def seqs(device_id: str) -> list[int]:
        page = http.get(f"/v1/devices/{device_id}/telemetry", headers=ADMIN, params={"type": "probe"}).json()
        return [item["seq"] for item in page["items"]]

    assert seqs(dev.id) == [3, 4, 5]
    assert seqs(other.id) == [1]  # another device's records are not touched
    dev.link.close()
    other.link.close()
