"""The agent's ClientApp called directly with Flower messages (no runtime): node-config deployment app,
private rounds paid from the ledger, a budget refusal the server can recognise, crashed rounds charged."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    Metadata,
    RecordDict,
)

from edge_agent.learning import clientapp
from edge_agent.learning.clientapp import DevicePolicy, RoundRefused, make_client_app
from edge_agent.learning.data import LocalData
from edge_agent.learning.ledger import PrivacyLedger
from edge_agent.learning.models import build_model
from edge_agent.learning.trainer import TrainerError
from fedge_protocol.federation import BUDGET_EXCEEDED_CODE, is_budget_refusal
from simulator.fl.partition import load_digits_arrays

X, Y = load_digits_arrays()
DATA = LocalData(X[:100], Y[:100], X[100:160], Y[100:160])


def _message(kind: str, server_round: int, **config: object) -> Message:
    model = build_model("digits-linear")
    arrays = ArrayRecord({k: Array(v.numpy()) for k, v in model.state_dict().items()})
    metadata = Metadata(
        run_id=7,
        message_id=f"{kind}-{server_round}",
        src_node_id=1,
        dst_node_id=5,
        reply_to_message_id="",
        group_id=str(server_round),
        created_at=time.time(),
        ttl=3600,
        message_type=kind,
    )
    cfg = ConfigRecord({"server-round": server_round, "model": "digits-linear", "job-id": "job-1", **config})  # type: ignore[dict-item]
    return Message(RecordDict({"arrays": arrays, "config": cfg}), metadata=metadata)


def _context(node_config: dict[str, object] | None = None) -> Context:
    return Context(run_id=7, node_id=5, node_config=node_config or {}, state=RecordDict(), run_config={})  # type: ignore[arg-type]


def _app(state_dir: Path, budget: float, require_dp: bool = False) -> object:
    policy = DevicePolicy("digits", budget_epsilon=budget, require_dp=require_dp)
    return make_client_app(lambda _: DATA, lambda _: state_dir, lambda _: policy)


PRIVATE = {"dp-target-epsilon": 3.0, "dp-delta": 1e-5, "planned-rounds": 2, "batch-size": 32, "lr": 0.5}


def test_the_deployment_app_reads_data_and_state_dir_from_node_config(tmp_path: Path) -> None:
    data = tmp_path / "digits.npz"
    with data.open("wb") as f:
        np.savez(f, x=X[:80], y=Y[:80], x_test=X[80:120], y_test=Y[80:120])
    context = _context({"fedge-data-path": str(data), "fedge-state-dir": str(tmp_path / "state")})

    trained = clientapp.app(_message(MessageType.TRAIN, 1, **{"local-epochs": 1}), context)
    scored = clientapp.app(_message(MessageType.EVALUATE, 1), context)

    metrics = dict(trained.content["metrics"])
    assert metrics["num-examples"] == 80 and metrics["dp-epsilon"] == 0.0
    assert set(metrics) == {
        "train_loss", "train_accuracy", "num-examples", "steps",
        "dp-epsilon", "dp-delta", "dp-noise-multiplier", "dp-budget-remaining",
    }  # fmt: skip
    assert trained.content["arrays"]["1.weight"].shape == (10, 64)
    assert dict(scored.content["metrics"])["num-examples"] == 40
    with pytest.raises(RoundRefused, match="fedge-data-path"):
        clientapp.app(_message(MessageType.TRAIN, 1), _context({}))


def test_private_rounds_are_paid_from_the_ledger_until_the_budget_refuses(tmp_path: Path) -> None:
    app = _app(tmp_path, budget=2.5)

    first = app(_message(MessageType.TRAIN, 1, **PRIVATE), _context())  # type: ignore[operator]
    second = app(_message(MessageType.TRAIN, 2, **PRIVATE), _context())  # type: ignore[operator]

    metrics = dict(first.content["metrics"])
    assert 1.5 < metrics["dp-epsilon"] < 2.5
    assert metrics["dp-delta"] == 1e-5 and metrics["dp-noise-multiplier"] > 0
    assert metrics["dp-budget-remaining"] == pytest.approx(2.5 - metrics["dp-epsilon"])
    assert second.has_error() and second.error.code == BUDGET_EXCEEDED_CODE
    assert is_budget_refusal(second.error)
    assert "budget 2.5000" in (second.error.reason or "")
    ledger = PrivacyLedger(tmp_path / "privacy" / "digits.json", budget_epsilon=2.5)
    assert ledger.spent == pytest.approx(metrics["dp-epsilon"])  # the refused round spent nothing
    assert ledger.orphans() == []


def test_a_restarted_agent_continues_the_job_and_charges_a_crashed_round(tmp_path: Path) -> None:
    _app(tmp_path, budget=10.0)(_message(MessageType.TRAIN, 1, **PRIVATE), _context())  # type: ignore[operator]
    ledger = PrivacyLedger(tmp_path / "privacy" / "digits.json", budget_epsilon=10.0)
    sigma = ledger.job("job-1")["noise_multiplier"]
    state = ledger.accountant_state
    assert state is not None
    _, rate, steps = state["history"][0]
    ledger.reserve("job-0", 1, 0.5, planned=(sigma, rate, steps))  # a round that crashed after reserving

    reply = _app(tmp_path, budget=10.0)(_message(MessageType.TRAIN, 2, **PRIVATE), _context())  # type: ignore[operator]

    after = PrivacyLedger(tmp_path / "privacy" / "digits.json", budget_epsilon=10.0)
    assert after.orphans() == []
    assert after.job("job-0")["rounds"][0]["orphaned"] is True
    assert after.job("job-1")["noise_multiplier"] == sigma  # fixed at the job's first round
    assert after.accountant_state == {"history": [[sigma, rate, 3 * steps]], "mechanism": "prv"}
    assert dict(reply.content["metrics"])["dp-epsilon"] == pytest.approx(after.spent)


def test_a_global_model_that_does_not_fit_reserves_nothing(tmp_path: Path) -> None:
    message = _message(MessageType.TRAIN, 1, **PRIVATE)
    message.content["arrays"] = ArrayRecord({"1.weight": Array(np.zeros((3, 3), dtype=np.float32))})

    with pytest.raises(TrainerError, match="missing"):
        _app(tmp_path, budget=5.0)(message, _context())  # type: ignore[operator]

    ledger = PrivacyLedger(tmp_path / "privacy" / "digits.json", budget_epsilon=5.0)
    assert (ledger.spent, ledger.orphans()) == (0.0, [])


def test_a_device_that_requires_dp_refuses_a_plain_round(tmp_path: Path) -> None:
    with pytest.raises(RoundRefused, match="only with local DP"):
        _app(tmp_path, budget=5.0, require_dp=True)(_message(MessageType.TRAIN, 1), _context())  # type: ignore[operator]
    with pytest.raises(RoundRefused, match="accounts at"):
        _app(tmp_path, budget=5.0)(  # type: ignore[operator]
            _message(MessageType.TRAIN, 1, **{**PRIVATE, "dp-delta": 1e-6}), _context()
        )
