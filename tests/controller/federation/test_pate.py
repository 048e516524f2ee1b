"""FedPATE on the controller (controller/federation/pate.py): the job API's checks (precise 422s), and the
ServerApp's run over the agent's real ClientApp called in this process (LocalGrid): votes summed,
Confident-GNMax labels, the epsilon target honoured, budget refusals and malformed replies kept out, the
student saved and reported."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict

from controller.app import create_app
from controller.chain.base import ChainBackend
from controller.config import ControllerSettings
from controller.federation.pate import LocalGrid, PateSpec, PateSpecError, digits_split, run_fedpate
from controller.federation.pate_analysis import data_independent_epsilon
from controller.federation.serverapp import FederationConfig, ListReporter
from controller.state import build_state
from edge_agent.learning.clientapp import DevicePolicy, make_client_app
from edge_agent.learning.data import LocalData
from fedge_protocol.federation import VOTES
from tests.conftest import ADMIN_TOKEN
from tests.controller.federation.fl_helpers import (
    ADMIN,
    enroll_direct,
    job_body,
    problem,
    register_digits_model,
)

PATE = {"num_teachers": 40, "sigma": 8.0}


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a ServerApp process has set when it builds messages."""
    from flwr.supercore.task_identity import TaskIdentity

    for attr, value in (("_run_id", 1), ("_task_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, attr, value)


# --- the job API ---------------------------------------------------------------------------------


@dataclass
class Ctl:
    client: TestClient
    model_id: str
    devices: list[str]

    def submit(self, **extra: Any) -> Any:
        body = job_body(self.model_id, self.devices, **extra)
        return self.client.post("/v1/fl/jobs", headers=ADMIN, json=body)


@pytest.fixture
def ctl(tmp_path: Path, shared_evm: ChainBackend) -> Iterator[Ctl]:
    settings = ControllerSettings(data_dir=tmp_path / "data", admin_token=ADMIN_TOKEN, _env_file=None)
    state = build_state(settings, shared_evm, start_jobs=False)
    with TestClient(create_app(state)) as client:
        _, model_id = register_digits_model(client)
        yield Ctl(client, model_id, [enroll_direct(state, site="lab"), enroll_direct(state, site="lab")])


def test_a_fedpate_job_is_queued_with_its_settings(ctl: Ctl) -> None:
    r = ctl.submit(algorithm="fedpate", pate={**PATE, "sigma1": 30.0, "threshold": 50, "epsilon": 8})
    assert r.status_code == 202, r.text
    job = ctl.client.get(f"/v1/fl/jobs/{r.json()['job_id']}", headers=ADMIN).json()
    assert job["spec"]["algorithm"] == "fedpate" and job["spec"]["pate"]["threshold"] == 50
    assert job["spec"]["pate"]["num_teachers"] == 40 and job["epsilon_spent"] is None


@pytest.mark.parametrize(
    ("extra", "field", "words"),
    [
        ({"algorithm": "fedpate"}, "body", "go together"),
        ({"pate": PATE}, "body", "go together"),
        ({"algorithm": "fedpate", "pate": {**PATE, "sigma": 0}}, "body.pate.sigma", "finite number > 0"),
        ({"algorithm": "fedpate", "pate": {**PATE, "sigma": -1}}, "body.pate.sigma", "> 0, got -1"),
        ({"algorithm": "fedpate", "pate": {**PATE, "epsilon": 0}}, "body.pate.epsilon", "> 0"),
        ({"algorithm": "fedpate", "pate": {**PATE, "delta": 1}}, "body.pate.delta", "in (0, 1)"),
        ({"algorithm": "fedpate", "pate": {**PATE, "noise": "uniform"}}, "body.pate.noise", "gaussian"),
        ({"algorithm": "fedpate", "pate": {**PATE, "sigma1": 20}}, "body.pate", "give threshold"),
        ({"algorithm": "fedpate", "pate": {**PATE, "threshold": 20}}, "body.pate", "needs sigma1"),
        ({"algorithm": "fedpate", "pate": {**PATE, "num_queries": 301}}, "body.pate.num_queries", "300"),
        (
            {"algorithm": "fedpate", "pate": {**PATE, "num_teachers": 0}},
            "body.pate.num_teachers",
            "greater than",
        ),
        ({"algorithm": "fedpate", "pate": {**PATE, "public": "cifar"}}, "body.pate.public", "digits"),
        ({"algorithm": "fedpate", "pate": {**PATE, "teachers": 3}}, "body.pate.teachers", "Extra inputs"),
        (
            {"algorithm": "fedpate", "pate": PATE, "privacy": {"dp": {"epsilon": 3}}},
            "privacy.dp",
            "does not apply",
        ),
        ({"algorithm": "fedpate", "pate": PATE, "engine": "nvflare"}, "algorithm", "use engine 'flower'"),
        (
            {"algorithm": "fedpate", "pate": PATE, "data": {"input_shape": [None, 3, 32, 32]}},
            "pate.public",
            "8x8 images",
        ),
    ],
)
def test_a_bad_fedpate_job_is_refused_with_a_precise_422(
    ctl: Ctl, extra: dict[str, Any], field: str, words: str
) -> None:
    p = problem(ctl.submit(**extra))
    assert p.status == 422, p.body
    assert p.field == field and words in p.detail, p.body


def test_the_run_config_spec_refuses_unknown_keys_and_bad_values() -> None:
    with pytest.raises(PateSpecError, match="unknown pate keys: bogus"):
        PateSpec.from_json('{"num_teachers": 2, "bogus": 1}')
    with pytest.raises(PateSpecError, match=r"pate\.sigma"):
        PateSpec(num_teachers=2, sigma=float("nan"))
    with pytest.raises(ValueError, match="algorithm is fedavg or fedpate"):
        FederationConfig.from_run_config({"algorithm": "fedsgd"})
    with pytest.raises(PateSpecError, match="not JSON"):
        PateSpec.from_json("{")


# --- the run, in process ---------------------------------------------------------------------------


def _constant(value: Any) -> Any:
    return lambda _context: value


def _devices(tmp_path: Path, n: int, budget: float = 200.0) -> dict[int, tuple[Any, Context]]:
    split = digits_split()
    policy = DevicePolicy("digits", budget_epsilon=budget)
    apps: dict[int, tuple[Any, Context]] = {}
    for d in range(n):
        part = np.array_split(np.arange(len(split.private_y)), n)[d]
        data = LocalData(split.private_x[part], split.private_y[part], split.test_x, split.test_y)
        state = tmp_path / f"device-{d}"
        app = make_client_app(_constant(data), _constant(state), _constant(policy))
        context = Context(run_id=1, node_id=10 + d, node_config={}, state=RecordDict(), run_config={})
        apps[10 + d] = (app, context)
    return apps


def _run(grid: Any, tmp_path: Path, spec: PateSpec, min_nodes: int = 2) -> ListReporter:
    config = FederationConfig.from_run_config(
        {"algorithm": "fedpate", "pate": spec.to_json(), "model": "digits-linear", "min-nodes": min_nodes,
         "output-path": str(tmp_path / "student.npz"), "job-id": "job-p", "round-timeout": 30.0}
    )  # fmt: skip
    reporter = ListReporter()
    run_fedpate(grid, config, reporter)
    return reporter


def test_the_devices_teachers_label_the_public_set_and_the_student_is_saved(tmp_path: Path) -> None:
    split = digits_split()
    spec = PateSpec(num_teachers=60, sigma=6.0, num_queries=120, batch_queries=60, teacher_epochs=60)

    reporter = _run(LocalGrid(_devices(tmp_path, 2)), tmp_path, spec)

    train = [r for r in reporter.rounds if r.kind == "train"]
    assert [r.round for r in train] == [1, 2] and all(r.participants == 2 for r in train)
    final = reporter.summary.final_metrics if reporter.summary else {}
    assert final["pate-queries"] == final["pate-answered"] == 120 and final["pate-teachers"] == 120
    assert final["pate-label-accuracy"] > 0.7  # 120 teachers of 5 digits each, sigma 6
    assert (
        0.5 < final["pate-student-accuracy"] <= 1 and final["eval_accuracy"] == final["pate-student-accuracy"]
    )
    assert final["pate-epsilon"] <= final["pate-epsilon-data-independent"] + 1e-9
    assert final["pate-epsilon-data-independent"] == pytest.approx(
        data_independent_epsilon("gaussian", 6.0, 120, 1e-5)
    )
    with np.load(tmp_path / "student.npz") as npz:
        assert {k: npz[k].shape for k in npz.files} == {"1.weight": (10, 64), "1.bias": (10,)}
    # every device paid its own share for both batches, and says so
    for report in train:
        assert all(c["metrics"]["dp-epsilon"] > 0 for c in report.clients)
    assert split.public_x.shape == (300, 1, 8, 8) and split.test_x.shape == (297, 1, 8, 8)


def test_the_run_stops_answering_before_it_passes_the_epsilon_target(tmp_path: Path) -> None:
    spec = PateSpec(
        num_teachers=30,
        sigma=4.0,
        epsilon=6.0,
        num_queries=200,
        batch_queries=100,
        teacher_epochs=30,
        self_training=0,
    )

    reporter = _run(LocalGrid(_devices(tmp_path, 2)), tmp_path, spec)

    final = reporter.summary.final_metrics if reporter.summary else {}
    assert final["pate-epsilon"] <= 6.0 and final["pate-queries"] < 200
    assert final["pate-epsilon"] > 5.0  # stopped at the last query that still fits
    assert [r.round for r in reporter.rounds if r.kind == "train"] == [1]  # the second batch never went out


def test_confident_gnmax_answers_only_queries_that_pass_the_threshold(tmp_path: Path) -> None:
    spec = PateSpec(
        num_teachers=60,
        sigma=5.0,
        sigma1=10.0,
        threshold=70.0,
        num_queries=100,
        teacher_epochs=60,
        self_training=0,
    )

    reporter = _run(LocalGrid(_devices(tmp_path, 2)), tmp_path, spec)

    final = reporter.summary.final_metrics if reporter.summary else {}
    assert final["pate-queries"] == 100 and 0 < final["pate-answered"] < 100
    # the confident queries are the easy ones: better labels than answering everything
    assert final["pate-label-accuracy"] > 0.85


class _Tampering(LocalGrid):
    """A grid whose first device replies with a histogram of the wrong shape."""

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> Any:
        replies = list(super().send_and_receive(messages, timeout=timeout))
        bad = replies[0]
        content = RecordDict(
            {
                VOTES: ArrayRecord({"votes": Array(np.zeros((3, 10)))}),
                "metrics": MetricRecord({"num-examples": 1}),
            }
        )
        replies[0] = Message(content, reply_to=self.sent[0])
        assert not bad.has_error()
        return replies


def test_a_malformed_reply_is_rejected_and_a_budget_refusal_excludes_the_device(tmp_path: Path) -> None:
    apps = _devices(tmp_path, 2)
    poor = _devices(tmp_path / "poor", 1, budget=0.5)  # this device's budget pays for nothing
    apps[99] = poor[10]
    spec = PateSpec(
        num_teachers=30, sigma=6.0, num_queries=60, batch_queries=30, teacher_epochs=30, self_training=0
    )

    reporter = _run(_Tampering(apps), tmp_path, spec, min_nodes=3)

    first, second = [r for r in reporter.rounds if r.kind == "train"]
    assert first.budget_refused == [99] and second.budget_refused == []  # not asked again
    assert [r["node_id"] for r in first.rejected] == [10] and "shape (3, 10)" in first.rejected[0]["reason"]
    assert first.participants == 1  # the missing shares of noise were added by the ServerApp
    assert reporter.summary is not None and reporter.summary.final_metrics["pate-answered"] == 60
