"""Federated learning end to end with real agents: a live controller (SQLite, local store, in-process EVM,
embedded MQTT broker, the FL engine: a TLS SuperLink with SuperNode authentication behind its Fleet-only
front, both on free loopback ports) and three enrolled agents, each a real ``fedge-agent run`` process
with ``FEDGE_AGENT_FL_ENABLED``, its own digits partition (``simulator.fl``: written here, never uploaded)
and a privacy budget. Everything after the set-up goes through the public API (the SDK):

1. a model served before the job (``y = x + 3``) is deployed to the three agents;
2. a 2-round FedAvg job with local DP (epsilon 8, delta 1e-5) and ``min_clients`` 3: each agent gets the
   signed ``fl-join`` (MQTT push), starts its ``flower-supernode`` with its enrolled key and the pinned
   CA, the rounds hold each agent's update lock (the FAB's ClientApp behind ``round_lock_mod``) while the
   local API keeps answering with the model served before the job; the job stores per-round metrics with
   the three participants and each device's epsilon; every agent's own ledger (``fedge-agent privacy``)
   holds the spend the controller mirrors; the result is a new model version (SHA-256, chain record,
   provenance verified) and the run is on chain (participant hashes, dp_epsilon, final model hash);
3. the result is translated to ONNX and rolled out in canary waves with automatic rollback: every agent
   serves it and classifies held-out digits through its local API.

Every process started here (agents, their SuperNodes and ClientApps, the SuperLink and ServerApps)
carries ``FEDGE_FL_TAG`` and is ended by PID at the end. About 1.5 minutes on 2 cores (the job: about 70 s).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from controller.chain.base import ChainBackend, participant_hash
from controller.client import FedgeClient
from controller.config import ControllerSettings
from controller.federation.flower import FlowerEngine, kill_tagged
from controller.schemas.commands import CommandOut
from controller.schemas.fl import FlJobOut
from controller.state import ControllerState, build_state
from edge_agent.identity import CA_FILE, enroll
from simulator.fl.partition import make_federated_digits
from tests.conftest import ADMIN_TOKEN, LiveServer
from tests.controller.federation.fl_helpers import register_digits_model
from tests.e2e.helpers import add_model, upload_onnx
from tests.fixtures.services import free_port, wait_for

pytestmark = pytest.mark.slow

TAG = uuid.uuid4().hex
QUIET = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "DO_NOT_TRACK": "1",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
}
BUDGET, EPSILON, DELTA = 20.0, 8.0, 1e-5
TIMINGS: dict[str, Any] = {}


@dataclass
class AgentProc:
    """One enrolled device running ``fedge-agent run`` with FL enabled."""

    index: int
    device_id: str
    state_dir: Path
    data: Path
    port: int
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.state_dir.parent / f"agent-{self.index}.log"

    def start(self) -> None:
        argv = [sys.executable, "-m", "edge_agent.cli", "run", "--state-dir", str(self.state_dir),
                "--api-port", str(self.port), "--poll-interval", "0.5"]  # fmt: skip
        out = open(self.log, "ab")  # noqa: SIM115 - the process owns it
        self.proc = subprocess.Popen(
            argv, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        out.close()

    def cli(self, *args: str) -> Any:
        """``fedge-agent <args> --state-dir`` with this device's settings; its JSON output."""
        done = subprocess.run(
            [sys.executable, "-m", "edge_agent.cli", *args, "--state-dir", str(self.state_dir)],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def supernode(self) -> dict[str, Any]:
        """The SuperNode service's status file (what ``fedge-agent status`` shows)."""
        try:
            status: dict[str, Any] = json.loads((self.state_dir / "fl" / "supernode.json").read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return status

    def tail(self, n: int = 3000) -> str:
        parts = [f"--- agent {self.index} ({self.device_id})", self.log.read_text(errors="replace")[-n:]]
        sn = self.state_dir / "fl" / "supernode.log"
        if sn.exists():
            parts += ["--- supernode", sn.read_text(errors="replace")[-n:]]
        return "\n".join(parts)


@dataclass
class FlFleet:
    live: LiveServer
    state: ControllerState
    model_id: str
    agents: list[AgentProc]
    served: tuple[str, int]
    """The model every agent serves before the FL job: (model_id, version) of ``y = x + 3``."""
    test_x: np.ndarray
    test_y: np.ndarray
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def ids(self) -> list[str]:
        return [a.device_id for a in self.agents]

    def logs(self) -> str:
        return "\n".join(a.tail() for a in self.agents)


def _infer(url: str, inputs: Any, timeout: float = 10) -> dict[str, Any]:
    r = httpx.post(f"{url}/v1/infer", json={"inputs": {"x": inputs}}, timeout=timeout)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _serving(url: str) -> tuple[str, int] | None:
    try:
        r = httpx.get(f"{url}/v1/model", timeout=2)
    except httpx.HTTPError:
        return None
    if r.status_code != 200:
        return None
    return r.json()["model_id"], r.json()["version"]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, shared_evm: ChainBackend) -> Iterator[FlFleet]:
    began = time.monotonic()
    tmp = tmp_path_factory.mktemp("fl-e2e")
    settings = ControllerSettings(
        data_dir=tmp / "controller",
        admin_token=ADMIN_TOKEN,
        fl_node_wait_seconds=90,
        fl_job_timeout_seconds=420,
        _env_file=None,
    )
    state = build_state(settings, shared_evm)
    agents: list[AgentProc] = []
    data = make_federated_digits(3, alpha=None, seed=0)
    parts = data.write(tmp / "partitions")
    try:
        with LiveServer(state) as live:
            state.settings.fl_report_url = live.url  # the ServerApp reports to this live controller
            with httpx.Client(base_url=live.url, timeout=30) as http:
                _, model_id = register_digits_model(http)
                served = upload_onnx(http, add_model(3.0))
            with FedgeClient(live.url, ADMIN_TOKEN) as fc:
                for k, part in enumerate(parts):
                    state_dir = tmp / f"agent-{k}" / "state"
                    token = fc.enrollment_token({"fl-e2e": TAG[:8]}, ttl_seconds=600).token
                    identity = enroll(live.url, token, state_dir, {"slot": str(k)}, {"cpu_count": 1})
                    env = {**os.environ, **QUIET, "FEDGE_FL_TAG": TAG,
                           "FEDGE_AGENT_FL_ENABLED": "true", "FEDGE_AGENT_FL_DATA_PATH": str(part),
                           "FEDGE_AGENT_FL_DATASET": "digits", "FEDGE_AGENT_FL_PRIVACY_BUDGET": str(BUDGET),
                           "FEDGE_AGENT_FL_PRIVACY_DELTA": str(DELTA)}  # fmt: skip
                    agents.append(AgentProc(k, identity.device_id, state_dir, part, free_port(), env))
                for agent in agents:
                    agent.start()
                for agent in agents:
                    wait_for(partial(_healthy, agent), 60, f"agent {agent.index}'s local API")
                # the model the agents serve before (and while) they train
                dep = fc.deploy(served[0], served[1], device_ids=[a.device_id for a in agents])
                rollout = fc.wait_deployment(dep.deployment_id, timeout=60, poll=0.3)
                assert rollout.state == "succeeded", (rollout, "\n".join(a.tail() for a in agents))
                for agent in agents:
                    wait_for(partial(_serves, agent, served), 20, "the first model served")
            TIMINGS["setup_s"] = round(time.monotonic() - began, 1)
            yield FlFleet(live, state, model_id, agents, served, data.x_test, data.y_test)
    finally:
        for agent in agents:
            if agent.proc is not None and agent.proc.poll() is None:
                agent.proc.send_signal(signal.SIGTERM)  # the agent stops its SuperNode (process group)
        codes = []
        for agent in agents:
            if agent.proc is None:
                continue
            try:
                codes.append(agent.proc.wait(30))
            except subprocess.TimeoutExpired:
                os.killpg(agent.proc.pid, signal.SIGKILL)
                agent.proc.wait(10)
                codes.append(-9)
        left = kill_tagged(TAG)  # anything an agent left behind (a SuperNode, a ClientApp)
        state.close()  # stops the SuperLink and every process it started (by PID)
        print(f"\nFL e2e timings: {json.dumps(TIMINGS)}; agent exit codes {codes}; left behind {left}")


def _serves(agent: AgentProc, model: tuple[str, int]) -> bool:
    return _serving(agent.url) == model


def _healthy(agent: AgentProc) -> bool:
    assert agent.proc is not None
    if agent.proc.poll() is not None:
        raise AssertionError(f"agent {agent.index} exited {agent.proc.returncode}:\n{agent.tail()}")
    try:
        return httpx.get(f"{agent.url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_three_agents_train_with_local_dp_while_serving_and_the_result_is_registered_and_on_chain(
    fleet: FlFleet,
) -> None:
    body = {
        "model": {"model_id": fleet.model_id, "network": "digits-linear"},
        "participants": {"device_ids": fleet.ids},
        "min_clients": 3,
        "rounds": 2,
        "lr": 0.5,
        "round_timeout": 120,
        "privacy": {"dp": {"epsilon": EPSILON, "delta": DELTA, "max_grad_norm": 1.0}},
    }
    watcher = fleet.agents[0]
    answers: list[list[list[float]]] = []
    in_round: list[str] = []  # answers given while the agent held its update lock for an FL round
    states: set[str] = set()

    def during(job: FlJobOut) -> None:
        """Every poll: the first agent's local API still serves the model from before the job."""
        states.add(job.status)
        holding = watcher.supernode().get("rounds_in_progress") or []
        out = _infer(watcher.url, [[0, 1, 2, 3]])
        assert (out["model_id"], out["version"]) == fleet.served
        answers.append(out["outputs"]["y"])
        if holding:
            in_round.extend(holding)

    with FedgeClient(fleet.live.url, ADMIN_TOKEN) as fc:
        began = time.monotonic()
        created = fc.fl_run(body)
        assert created.min_clients == 3 and sorted(created.participants) == sorted(fleet.ids)
        job = fc.wait_fl_job(created.job_id, timeout=360, poll=0.5, on_update=during)
        TIMINGS["job_s"] = round(time.monotonic() - began, 1)
        assert job.status == "succeeded", (job.error, fleet.logs())

        # per-round metrics: the three devices trained and evaluated every round, with local DP
        assert job.rounds_completed == 2 and [r.round for r in job.metrics] == [1, 2]
        for r in job.metrics:
            assert sorted(r.participants) == sorted(r.evaluated) == sorted(fleet.ids), r
            assert r.stragglers == [] and r.budget_refused == [] and r.rejected == [] and r.failures == 0
            assert r.train_loss is not None and r.eval_accuracy is not None and 0 <= r.eval_accuracy <= 1
            assert set(r.epsilon) == set(fleet.ids) and all(
                0 < e <= EPSILON + 1e-6 for e in r.epsilon.values()
            )
        parts = {p.device_id: p for p in job.participants}
        assert {p.state for p in parts.values()} == {"trained"} and all(
            p.rounds_trained == 2 for p in parts.values()
        )
        spent = {d: parts[d].epsilon or 0.0 for d in fleet.ids}
        assert all(0 < e <= EPSILON + 1e-6 for e in spent.values()), spent  # within the plan
        assert job.epsilon_spent == pytest.approx(max(spent.values()))
        TIMINGS["eval_accuracy"] = [round(r.eval_accuracy or 0, 4) for r in job.metrics]
        TIMINGS["epsilon_max"] = round(max(spent.values()), 4)

        # each device's own ledger holds the spend; the controller's mirror reflects it
        for agent in fleet.agents:
            ledgers = agent.cli("privacy")
            mine = next(e for e in ledgers if e["dataset"] == "digits")
            assert mine["configured"] and mine["budget_epsilon"] == BUDGET and mine["reserved_epsilon"] == 0
            assert mine["spent_epsilon"] == pytest.approx(spent[agent.device_id], abs=1e-9)
            assert mine["remaining_epsilon"] == pytest.approx(BUDGET - spent[agent.device_id], abs=1e-9)
            assert job.job_id in mine["jobs"]
            mirror = fc.device_privacy(agent.device_id)
            row = next(d for d in mirror.datasets if d.dataset == "digits")
            assert row.epsilon_spent == pytest.approx(mine["spent_epsilon"], abs=1e-9) and row.rounds == 2
            assert row.budget_remaining == pytest.approx(mine["remaining_epsilon"], abs=1e-9)
            assert row.last_job_id == job.job_id and row.delta == pytest.approx(DELTA)
            assert [j.job_id for j in mirror.jobs] == [job.job_id]

        # the result: the model's next version, hashed, recorded, provenance verified
        assert job.result is not None and job.result.model_id == fleet.model_id
        versions = {v.version: v for v in fc.model_versions(fleet.model_id)}
        result = versions[job.result.version]
        assert result.kind == "trained" and result.format == "pytorch" and result.sha256 == job.result.sha256
        provenance = fc.model_provenance(fleet.model_id)
        assert provenance.verified, provenance

        # the run on chain
        chain = job.chain
        assert chain is not None and chain.run_id == job.job_id and chain.tx_hash.startswith("0x")
        assert chain.final_model_hash == job.result.sha256 == result.sha256
        assert sorted(chain.participant_hashes) == sorted(participant_hash(d).hex() for d in fleet.ids)
        assert chain.rounds == 2 and chain.strategy == "flower:fedavg" and chain.model_id == fleet.model_id
        assert chain.dp_epsilon == pytest.approx(job.epsilon_spent) and chain.dp_delta == pytest.approx(DELTA)
        assert not chain.he_enabled
        fleet.results["job"] = job

    # the agents held their update lock for the rounds, and inference answered meanwhile
    assert {"running", "succeeded"} <= states
    assert answers and all(y == [[3.0, 4.0, 5.0, 6.0]] for y in answers)
    assert in_round, f"no FL round seen holding the update lock ({len(answers)} polls)\n{watcher.tail()}"
    engine = fleet.state.federation.engine
    assert isinstance(engine, FlowerEngine)
    front = engine.front.address
    joins: dict[str, CommandOut] = {}
    for agent in fleet.agents:
        log = agent.log.read_text(errors="replace")
        assert "fl-round train" in log and "holds the update lock" in log, agent.tail()
        assert "fl-round evaluate" in log and "released the update lock" in log, agent.tail()
        assert _serving(agent.url) == fleet.served  # the job changed nothing the agent serves
        # the SuperNode joined with the device's enrolled key over TLS verified against the pinned CA
        argv = next(line for line in (agent.state_dir / "fl" / "supernode.log").read_text().splitlines()
                    if line.startswith("--- fedge-agent"))  # fmt: skip
        assert "--auth-supernode-private-key" in argv and "--root-certificates" in argv, argv
        pinned = (agent.state_dir / CA_FILE).read_text()
        assert (agent.state_dir / "fl" / "superlink-ca.pem").read_text() == pinned
        assert not (agent.state_dir / "fl" / "supernode-key").exists()  # removed when the SuperNode stopped
        joins[agent.device_id] = _fl_join(fleet, agent, job.job_id)

    for device_id, join in joins.items():
        assert join.params["node_auth"] is True and join.params["superlink"] == front
        assert (
            join.params["privacy"]["local_dp"] is True and join.params["privacy"]["target_epsilon"] == EPSILON
        )
        assert join.state == "succeeded" and join.result is not None, join
        assert join.result["job_id"] == job.job_id and str(join.result["left"]).startswith("fl-leave"), join
        fleet.results.setdefault("joins", {})[device_id] = join.result


def _fl_join(fleet: FlFleet, agent: AgentProc, job_id: str) -> CommandOut:
    """The device's fl-join for ``job_id`` once it ended (the fl-leave at the job's end ends it)."""
    found: list[CommandOut] = []

    def ended() -> bool:
        with FedgeClient(fleet.live.url, ADMIN_TOKEN) as fc:
            items = fc.commands(agent.device_id).items
        found[:] = [c for c in items if c.kind == "fl-join" and c.params.get("job_id") == job_id]
        return bool(found) and found[0].state in ("succeeded", "failed")

    wait_for(ended, 30, f"agent {agent.index}'s fl-join to end", interval=0.3)
    return found[0]


def test_the_fl_result_translates_and_rolls_out_to_the_three_agents_in_canary_waves(fleet: FlFleet) -> None:
    job = fleet.results.get("job")
    if job is None:
        pytest.fail("needs the FL job of the previous test, which did not finish: run the module whole")
    assert job.result is not None
    with FedgeClient(fleet.live.url, ADMIN_TOKEN) as fc:
        began = time.monotonic()
        onnx = fc.translate(fleet.model_id, source_version=job.result.version)
        TIMINGS["translate_s"] = round(time.monotonic() - began, 1)
        assert onnx.source_version == job.result.version and onnx.max_abs_diff is not None
        assert onnx.max_abs_diff <= onnx.tolerance
        began = time.monotonic()
        started = fc.deploy(fleet.model_id, onnx.version, device_ids=fleet.ids, waves=[0.1, 1.0],
                            auto_rollback=True)  # fmt: skip
        rollout = fc.wait_deployment(started.deployment_id, timeout=120, poll=0.3)
        TIMINGS["deploy_s"] = round(time.monotonic() - began, 1)
    assert rollout.state == "succeeded", (rollout, fleet.logs())
    assert sorted(t.device_id for t in rollout.devices) == sorted(fleet.ids)
    assert all(t.state == "succeeded" for t in rollout.devices)
    assert sorted(t.wave for t in rollout.devices) == [0, 1, 1]  # one canary, then the rest
    x, y = fleet.test_x, fleet.test_y
    for agent in fleet.agents:
        wait_for(partial(_serves, agent, (fleet.model_id, onnx.version)), 30, "the FL model")
        out = _infer(agent.url, x.tolist(), timeout=30)
        assert (out["model_id"], out["version"]) == (fleet.model_id, onnx.version)
        scores = np.asarray(next(iter(out["outputs"].values())))
        assert scores.shape == (len(x), 10)
        accuracy = float((scores.argmax(axis=1) == y).mean())
        assert accuracy > 0.3, accuracy  # learned something (chance: 0.1)
        # the devices' test parts together are this test set: the ONNX model on the agent scores what the
        # federation's last evaluation of the global model did (example-weighted over the devices)
        assert accuracy == pytest.approx(job.metrics[-1].eval_accuracy, abs=0.01)
        TIMINGS.setdefault("onnx_accuracy", []).append(round(accuracy, 4))
