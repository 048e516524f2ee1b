"""fl-join / fl-leave on the device: the command worker routes them to the SuperNode service, the device's
checks (data, privacy plan against its ledger), the acknowledgements, signed commands without a model,
and the ``fedge-agent privacy`` / ``status`` output."""

from __future__ import annotations

import importlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from typer.testing import CliRunner

from edge_agent.grid import CommandRunner
from edge_agent.learning.join import JoinRefused, check_join, privacy_report, run_fl_command
from edge_agent.learning.supernode import (
    DeviceData,
    JoinOutcome,
    Membership,
    SupernodeConfig,
    SupernodeService,
)
from edge_agent.link.signed import SignatureInvalid, verify_command
from fedge_protocol import DocumentType, canonical_json, envelope, signing_input
from fedge_protocol.fl_commands import FlJoin
from tests.edge_agent.learning.devices import Ca, enroll, join_params, make_ca, write_data


class _RunningProcess:
    pid = 123

    def poll(self) -> None:
        return None


class NoProcessSupernode(SupernodeService):
    """The real service (memberships, acknowledgements, persistence) with the process part stubbed out:
    a SuperNode "starts" at once and joins as node 7."""

    def __init__(self, setup: Setup) -> None:
        super().__init__(setup.state, setup.data, record=setup.record)
        self.spawns = 0
        self.runner_lock: Any = None
        self.lock_held_during_join: list[bool] = []

    def join(self, command_id: str, config: SupernodeConfig, member: Membership) -> JoinOutcome:
        if self.runner_lock is not None:
            self.lock_held_during_join.append(self.runner_lock.held)
        return super().join(command_id, config, member)

    def _program(self) -> str:
        return "flower-supernode"

    def _spawn(self, config: SupernodeConfig) -> None:
        self.spawns += 1
        self._config, self._node_id, self._port = config, 7, 5000
        self._proc = _RunningProcess()  # type: ignore[assignment]

    def _wait_joined(self, proc: Any) -> bool:
        return True

    def _terminate(self) -> None:
        self._proc, self._node_id = None, None


@dataclass
class Setup:
    ca: Ca
    state: Path
    data: DeviceData
    records: list[dict[str, Any]] = field(default_factory=list)

    def record(self, body: dict[str, Any]) -> int:
        self.records.append(body)
        return len(self.records)


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    ca = make_ca()
    state = tmp_path / "state"
    enroll(state, ca)
    data = DeviceData(path=write_data(tmp_path / "digits.npz"), dataset="digits", budget_epsilon=2.5)
    return Setup(ca, state, data)


def _command(command_id: str, kind: str, params: dict[str, Any]) -> dict[str, Any]:
    return {"type": "fedge.command", "command_id": command_id, "kind": kind, "params": params}


def _run(setup: Setup, fake: NoProcessSupernode | None, *commands: dict[str, Any]) -> list[dict[str, Any]]:
    runner = CommandRunner(setup.state, None, setup.record, fl=fake)
    if fake is not None:
        fake.runner_lock = runner.update_lock
    runner.start()
    try:
        for command in commands:
            assert runner.submit(command)
        assert runner.idle.wait(30)
    finally:
        runner.stop()
    return setup.records


# ------------------------------------------------------------------ routing and acknowledgements
def test_fl_join_goes_to_the_supernode_service_and_is_acknowledged_running(setup: Setup) -> None:
    fake = NoProcessSupernode(setup)

    [ack] = _run(setup, fake, _command("c-1", "fl-join", join_params(setup.ca.pem, node_id=7)))

    assert ack == {
        "type": "command",
        "command_id": "c-1",
        "state": "running",
        "fl": {
            "job_id": "job-1",
            "superlink": "127.0.0.1:9093",
            "connected": True,
            "node_id": 7,
            "dataset": "digits",
            "examples": 24,
            "budget_remaining": 2.5,
        },
    }
    [member] = fake.memberships()
    assert (member.job_id, member.command_id, member.node_id) == ("job-1", "c-1", 7)
    assert member.leave_after is not None and member.leave_after > time.time()
    assert fake._config == SupernodeConfig("127.0.0.1:9093", setup.ca.pem, node_auth=True)
    assert json.loads((setup.state / "fl" / "joins.json").read_text())["jobs"][0]["command_id"] == "c-1"
    assert fake.lock_held_during_join == [False]  # joining does not hold off deployments; rounds do
    assert not (setup.state / "command-running").exists()


def test_fl_leave_ends_the_join_then_itself(setup: Setup) -> None:
    fake = NoProcessSupernode(setup)

    records = _run(
        setup,
        fake,
        _command("c-join", "fl-join", join_params(setup.ca.pem)),
        _command("c-leave", "fl-leave", {"job_id": "job-1"}),
        _command("c-again", "fl-leave", {"job_id": "job-1"}),
    )

    assert [(r["command_id"], r["state"], r.get("result")) for r in records[1:]] == [
        ("c-leave", "running", None),
        ("c-join", "succeeded", {"job_id": "job-1", "left": "fl-leave c-leave"}),
        ("c-leave", "succeeded", {"job_id": "job-1", "was_member": True}),
        ("c-again", "running", None),
        ("c-again", "succeeded", {"job_id": "job-1", "was_member": False}),
    ]
    assert fake.memberships() == []


def test_a_second_join_of_a_job_or_one_for_another_superlink_ends_the_earlier_joins(setup: Setup) -> None:
    fake = NoProcessSupernode(setup)

    records = _run(
        setup,
        fake,
        _command("c-1", "fl-join", join_params(setup.ca.pem, job_id="job-1")),
        _command("c-2", "fl-join", join_params(setup.ca.pem, job_id="job-1")),
        _command("c-3", "fl-join", join_params(setup.ca.pem, "other.example:443", job_id="job-2")),
    )

    ended = [(r["command_id"], r["result"]["left"]) for r in records if r["state"] == "succeeded"]
    assert ended == [
        ("c-1", "joined again by command c-2"),
        ("c-2", "replaced by job job-2 on other.example:443"),
    ]
    assert [r["command_id"] for r in records if r["state"] == "running"] == ["c-1", "c-2", "c-3"]
    assert [m.job_id for m in fake.memberships()] == ["job-2"]
    assert fake.spawns == 2  # the same SuperLink again reuses the running SuperNode


def test_a_device_without_fl_refuses_to_join(setup: Setup) -> None:
    records = _run(
        setup,
        None,
        _command("c-1", "fl-join", join_params(setup.ca.pem)),
        _command("c-2", "fl-leave", {"job_id": "job-1"}),
    )

    assert records[0]["state"] == "failed" and "FEDGE_AGENT_FL_ENABLED" in records[0]["error"]
    assert records[-1] == {
        "type": "command",
        "command_id": "c-2",
        "state": "succeeded",
        "result": {"job_id": "job-1", "was_member": False},
    }


def test_malformed_params_fail_the_command(setup: Setup) -> None:
    fake = NoProcessSupernode(setup)
    records: list[dict[str, Any]] = []

    run_fl_command(_command("c-1", "fl-join", {"job_id": "job-1"}), fake, records.append)  # type: ignore[arg-type]

    assert records[0]["state"] == "failed" and records[0]["error"].startswith("bad fl-join params:")
    assert "superlink" in records[0]["error"] and fake.memberships() == []


# ------------------------------------------------------------------ the device's checks
def _params(ca: Ca, **over: Any) -> FlJoin:
    return FlJoin.model_validate(join_params(ca.pem, **over))


def _dp(**plan: Any) -> dict[str, Any]:
    return {"local_dp": True, **plan}


@pytest.mark.parametrize(
    ("over", "device", "reason"),
    [
        (
            {"data": {"dataset": "mnist", "input_shape": [None, 1, 8, 8]}},
            {},
            "holds dataset 'digits', not 'mnist'",
        ),
        ({"data": {"dataset": "digits", "input_shape": [None, 1, 28, 28]}}, {}, "expects examples of shape"),
        ({"data": {"dataset": "digits", "input_shape": [None, 64]}}, {}, "expects examples of shape"),
        (
            {"data": {"dataset": "digits", "input_shape": [None, 1, 8, 8], "min_examples": 100}},
            {},
            "at least 100",
        ),
        (
            {"data": {"dataset": "digits", "input_shape": [None, 1, 8, 8], "num_classes": 5}},
            {},
            "labels must be",
        ),
        ({}, {"require_dp": True}, "only with local DP"),
        ({"privacy": _dp(target_epsilon=1.0, delta=1e-6)}, {}, "this device accounts at 1e-05"),
        ({"privacy": _dp(target_epsilon=1.0, accountant="rdp")}, {}, "this device uses 'prv'"),
        ({"privacy": _dp(target_epsilon=3.0)}, {}, "has 2.5 left on 'digits'"),
        ({"leave_after": "2020-01-01T00:00:00Z"}, {}, "has passed"),
        ({"leave_after": "tomorrow"}, {}, "not an ISO 8601 time"),
        ({"superlink": "https://ctl.example"}, {}, "is not host:port"),
        ({"tls": {"root_certificate": "junk"}}, {}, "not a PEM certificate"),
        ({"tls": {"root_certificate": "-----BEGIN CERTIFICATE-----", "server_name": "x"}}, {}, "server_name"),
    ],
)
def test_a_join_the_device_cannot_honour_is_refused(
    setup: Setup, over: dict[str, Any], device: dict[str, Any], reason: str
) -> None:
    data = DeviceData(**{**setup.data.__dict__, **device})
    with pytest.raises(JoinRefused, match=reason.replace("(", r"\(").replace(".", r"\.")):
        check_join(_params(setup.ca, **over), data, setup.state, now=time.time())


def test_a_device_without_data_refuses(setup: Setup) -> None:
    with pytest.raises(JoinRefused, match="FEDGE_AGENT_FL_DATA_PATH"):
        check_join(_params(setup.ca), None, setup.state, now=time.time())


def test_the_budget_check_counts_other_jobs_spend_but_not_the_joining_jobs_own(setup: Setup) -> None:
    importlib.import_module("numpy")
    from edge_agent.learning.ledger import PrivacyLedger

    ledger = PrivacyLedger(setup.state / "privacy" / "digits.json", budget_epsilon=2.5, dataset="digits")
    ledger.reserve("job-A", 1, 1.5)
    ledger.commit("job-A", 1, epsilon=1.5, accountant_state={"history": []})
    now = time.time()

    with pytest.raises(JoinRefused, match="has 1 left"):
        check_join(
            _params(setup.ca, job_id="job-B", privacy=_dp(target_epsilon=1.5)),
            setup.data,
            setup.state,
            now=now,
        )
    _, _, facts = check_join(
        _params(setup.ca, job_id="job-B", privacy=_dp(target_epsilon=1.0)), setup.data, setup.state, now=now
    )
    assert facts["budget_remaining"] == pytest.approx(1.0)
    # job-A rejoining (e.g. after the agent lost its membership) may go on to its planned 2.0
    check_join(
        _params(setup.ca, job_id="job-A", privacy=_dp(target_epsilon=2.0)), setup.data, setup.state, now=now
    )


# ------------------------------------------------------------------ signed commands without a model
def _signed(ca: Ca, payload: dict[str, Any]) -> dict[str, str]:
    body = canonical_json(payload)
    return envelope(body, ca.key.sign(signing_input(DocumentType.COMMAND, body), ec.ECDSA(hashes.SHA256())))


def test_fl_commands_verify_without_a_model_and_a_grid_run_still_needs_one(setup: Setup) -> None:
    device_id = json.loads((setup.state / "identity.json").read_text())["device_id"]
    base = {"type": "fedge.command", "device_id": device_id}
    for kind, params in (("fl-join", join_params(setup.ca.pem)), ("fl-leave", {"job_id": "job-1"})):
        payload = verify_command(
            _signed(setup.ca, {**base, "command_id": kind, "kind": kind, "params": params}),
            setup.ca.cert,
            device_id,
        )
        assert payload["kind"] == kind
    with pytest.raises(SignatureInvalid, match="lacks model"):
        verify_command(
            _signed(setup.ca, {**base, "command_id": "g", "kind": "grid-run"}), setup.ca.cert, device_id
        )


# ------------------------------------------------------------------ fedge-agent privacy / status
def test_fedge_agent_privacy_prints_the_ledgers_under_the_devices_budget(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edge_agent.cli import app
    from edge_agent.learning.ledger import PrivacyLedger

    ledger = PrivacyLedger(setup.state / "privacy" / "digits.json", budget_epsilon=2.0, dataset="digits")
    ledger.reserve("job-A", 1, 0.5)
    ledger.commit("job-A", 1, epsilon=0.4, accountant_state={"history": []}, steps=3)
    ledger.set_noise_plan("job-A", 1.1, {})
    ledger.reserve("job-A", 2, 0.3)  # a round in flight
    monkeypatch.setenv("FEDGE_AGENT_FL_DATA_PATH", str(setup.data.path))
    monkeypatch.setenv("FEDGE_AGENT_FL_PRIVACY_BUDGET", "3.0")

    result = CliRunner().invoke(app, ["privacy", "--state-dir", str(setup.state)])

    assert result.exit_code == 0, result.output
    [entry] = json.loads(result.output)
    assert entry["dataset"] == "digits" and entry["configured"] is True
    assert entry["budget_epsilon"] == 3.0  # the device's setting now, not the one last saved
    assert (entry["spent_epsilon"], entry["reserved_epsilon"]) == pytest.approx((0.4, 0.3))
    assert entry["remaining_epsilon"] == pytest.approx(2.3)
    assert entry["jobs"] == {"job-A": {"rounds": 1, "epsilon": pytest.approx(0.4), "noise_multiplier": 1.1}}
    assert privacy_report(setup.state, None)[0]["budget_epsilon"] == 2.0  # without settings: the saved one


def test_fedge_agent_privacy_without_a_ledger_shows_the_whole_budget(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edge_agent.cli import app

    monkeypatch.setenv("FEDGE_AGENT_FL_DATA_PATH", str(setup.data.path))
    monkeypatch.setenv("FEDGE_AGENT_FL_PRIVACY_BUDGET", "1.5")
    result = CliRunner().invoke(app, ["privacy", "--state-dir", str(setup.state)])
    assert result.exit_code == 0, result.output
    [entry] = json.loads(result.output)
    assert (entry["dataset"], entry["remaining_epsilon"], entry["file"]) == ("digits", 1.5, None)


def test_fedge_agent_status_shows_the_supernode(setup: Setup) -> None:
    from edge_agent.cli import app

    result = CliRunner().invoke(app, ["status", "--state-dir", str(setup.state)])
    assert result.exit_code == 0 and json.loads(result.output)["supernode"] is None

    (setup.state / "fl").mkdir()
    (setup.state / "fl" / "supernode.json").write_text(
        json.dumps({"state": "running", "pid": 1, "node_id": 7})
    )
    result = CliRunner().invoke(app, ["status", "--state-dir", str(setup.state)])
    supernode = json.loads(result.output)["supernode"]
    assert supernode["alive"] is False and supernode["state"].startswith(
        "not running"
    )  # pid 1 is no SuperNode
    assert supernode["node_id"] == 7


def test_fedge_agent_run_hosts_the_supernode_only_when_fl_is_on(setup: Setup) -> None:
    importlib.import_module("onnxruntime")
    from edge_agent.cli import _agent_services
    from edge_agent.config import AgentSettings
    from edge_agent.identity import DeviceIdentity
    from edge_agent.learning.supernode import SupernodeService
    from edge_agent.link.client import ControllerLink
    from edge_agent.link.outbox import Outbox

    identity = DeviceIdentity.load(setup.state)
    link = ControllerLink(identity)
    outbox = Outbox.in_state_dir(setup.state)
    try:
        for enabled in (False, True):
            settings = AgentSettings(
                state_dir=setup.state, mqtt=False, fl_enabled=enabled, fl_data_path=setup.data.path
            )
            services, _api = _agent_services(settings, identity, link, outbox)
            names = [s.name for s in services]
            runner = services[-1]
            if not enabled:
                assert "fl-supernode" not in names and runner.fl is None  # type: ignore[attr-defined]
                continue
            assert names[-2:] == ["fl-supernode", "commands"]  # started before the worker that routes to it
            supernode = services[-2]
            assert isinstance(supernode, SupernodeService) and runner.fl is supernode  # type: ignore[attr-defined]
            assert supernode.data == DeviceData(path=setup.data.path, dataset="digits")
            assert supernode.update_lock is runner.update_lock  # type: ignore[attr-defined]
    finally:
        outbox.close()
        link.close()
