"""FedPATE on the device (edge_agent/learning/pate.py): disjoint teacher shards, noisy vote histograms, the
ledger charged before any vote leaves, and the ClientApp's query handler (called with Flower messages)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, Metadata, RecordDict

from edge_agent.learning import dp
from edge_agent.learning.clientapp import DevicePolicy, make_client_app
from edge_agent.learning.data import LocalData
from edge_agent.learning.ledger import BudgetExceeded, PrivacyLedger
from edge_agent.learning.models import resolve_factory
from edge_agent.learning.pate import (
    PateError,
    VoteSettings,
    answer_votes,
    charge_votes,
    noise_share,
    shard_indices,
    train_teachers,
    vote_histogram,
)
from fedge_protocol.federation import PUBLIC, VOTES, PateKey, is_budget_refusal
from simulator.fl.partition import load_digits_arrays

X, Y = load_digits_arrays()
DATA = LocalData(X[:400], Y[:400], X[400:500], Y[400:500])
PUBLIC_X = X[1500:1560]


def _settings(**extra: object) -> VoteSettings:
    base: dict[str, object] = {
        "job": "job-1", "batch": 1, "network": "digits-linear", "seed": 3, "num_teachers": 20,
        "noise": "gaussian", "sigma": 6.0, "parties": 2, "num_classes": 10, "teacher_epochs": 60,
    }  # fmt: skip
    base.update(extra)
    return VoteSettings(**base)  # type: ignore[arg-type]


def _ledger(tmp_path: Path, budget: float = 100.0, accountant: str = "prv") -> PrivacyLedger:
    return PrivacyLedger(tmp_path / "digits.json", budget_epsilon=budget, accountant=accountant)


def test_shards_are_disjoint_and_cover_the_data() -> None:
    shards = shard_indices(103, 10, seed=1)
    joined = np.concatenate(shards)
    assert len(shards) == 10 and sorted(joined.tolist()) == list(range(103))
    assert {len(s) for s in shards} <= {10, 11}
    assert [s.tolist() for s in shard_indices(103, 10, seed=1)] == [s.tolist() for s in shards]
    with pytest.raises(PateError, match="at least as many examples"):
        shard_indices(5, 6, seed=0)


def test_teachers_learn_and_their_votes_count_one_per_teacher() -> None:
    ensemble = train_teachers(resolve_factory("digits-linear"), DATA, 20, seed=0, num_classes=10, epochs=60)
    labels = ensemble.predict(PUBLIC_X)
    votes = vote_histogram(labels, 10)

    assert labels.shape == (20, 60) and len(ensemble.teachers) == 20
    assert np.all(votes.sum(axis=1) == 20)
    assert ensemble.accuracy(DATA.x_test, DATA.y_test) > 0.3  # 20 examples each; chance is 0.1
    assert (votes.argmax(axis=1) == Y[1500:1560]).mean() > 0.6  # the plurality is better than a teacher


def test_noise_shares_sum_to_the_aggregate_noise() -> None:
    rng = np.random.default_rng(0)
    total = sum(noise_share((20_000,), "gaussian", 8.0, 4, rng) for _ in range(4))
    assert np.std(total) == pytest.approx(8.0, rel=0.03)
    laplace = noise_share((20_000,), "laplace", 5.0, 4, rng)  # a full Lap(5) on every device
    assert np.mean(np.abs(laplace)) == pytest.approx(5.0, rel=0.05)
    a, b = noise_share((5,), "gaussian", 1.0, 1), noise_share((5,), "gaussian", 1.0, 1)
    assert not np.allclose(a, b)  # from os.urandom, not a seed


def test_the_ledger_pays_the_device_own_noise_share_for_every_query(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    settings = _settings(sigma1=20.0)

    epsilon, remaining = charge_votes(ledger, settings, 60)

    expected, _ = dp.epsilon_after(None, 1e-5, 6.0 / math.sqrt(4), 1.0, 60, "prv")
    expected, _ = dp.epsilon_after(_, 1e-5, 20.0 / math.sqrt(4), 1.0, 60, "prv")
    assert epsilon == pytest.approx(expected, rel=1e-9) and remaining == pytest.approx(100.0 - epsilon)
    reread = _ledger(tmp_path)
    assert reread.spent == pytest.approx(epsilon) and reread.job("job-1")["rounds"][0]["steps"] == 60
    with pytest.raises(PateError, match="already answered"):
        charge_votes(reread, settings, 60)


def test_a_batch_over_budget_is_refused_and_charges_nothing(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path, budget=1.0)
    with pytest.raises(BudgetExceeded):
        answer_votes(DATA, PUBLIC_X, _settings(), ledger)
    assert _ledger(tmp_path, budget=1.0).spent == 0.0 and not ledger.orphans()


def test_laplace_votes_need_the_rdp_accountant(tmp_path: Path) -> None:
    with pytest.raises(PateError, match="rdp accountant"):
        charge_votes(_ledger(tmp_path), _settings(noise="laplace"), 10)
    epsilon, _ = charge_votes(_ledger(tmp_path / "rdp", accountant="rdp"), _settings(noise="laplace"), 10)
    assert epsilon == pytest.approx(dp.epsilon_after(None, 1e-5, 3.0, 1.0, 10, "rdp")[0])


def test_public_examples_of_another_shape_are_refused(tmp_path: Path) -> None:
    with pytest.raises(PateError, match="public examples"):
        answer_votes(DATA, np.zeros((5, 64), dtype=np.float32), _settings(), _ledger(tmp_path))
    assert _ledger(tmp_path).spent == 0.0


# --- the ClientApp's query handler ---------------------------------------------------------------


def _query(x: np.ndarray, **config: object) -> Message:
    metadata = Metadata(
        run_id=7, message_id="q-1", src_node_id=1, dst_node_id=5, reply_to_message_id="", group_id="1",
        created_at=time.time(), ttl=3600, message_type=MessageType.QUERY,
    )  # fmt: skip
    cfg = {
        PateKey.JOB_ID: "job-1", PateKey.BATCH: 1, PateKey.MODEL: "digits-linear", PateKey.SEED: 3,
        PateKey.NUM_TEACHERS: 20, PateKey.NOISE: "gaussian", PateKey.SIGMA: 6.0, PateKey.SIGMA1: 0.0,
        PateKey.PARTIES: 2, PateKey.NUM_CLASSES: 10, PateKey.TEACHER_EPOCHS: 60, PateKey.LR: 0.5,
    }  # fmt: skip
    cfg.update(config)
    content = RecordDict({PUBLIC: ArrayRecord({"x": Array(x)}), "config": ConfigRecord(cfg)})  # type: ignore[arg-type]
    message: Message = Message(content, metadata=metadata)  # type: ignore[call-overload]
    return message


def _context() -> Context:
    return Context(run_id=7, node_id=5, node_config={}, state=RecordDict(), run_config={})


def _app(state_dir: Path, budget: float) -> object:
    policy = DevicePolicy("digits", budget_epsilon=budget)
    return make_client_app(lambda _: DATA, lambda _: state_dir, lambda _: policy)


def test_the_clientapp_answers_a_vote_query_with_noisy_histograms_and_its_epsilon(tmp_path: Path) -> None:
    app = _app(tmp_path, budget=100.0)

    reply = app(_query(PUBLIC_X, **{PateKey.SIGMA1: 30.0}), _context())  # type: ignore[operator]

    assert not reply.has_error(), reply.error
    votes = reply.content[VOTES]["votes"].numpy()
    check = reply.content[VOTES]["check"].numpy()
    assert votes.shape == check.shape == (60, 10) and not np.allclose(votes, check)
    # 20 votes per query plus zero-mean noise (from the OS: not seeded): the mean row sum is 20 within 5
    # standard errors of the mean
    sums = votes.sum(axis=1)
    assert abs(sums.mean() - 20) < 5 * sums.std(ddof=1) / np.sqrt(len(sums))
    metrics = dict(reply.content["metrics"])
    assert metrics[PateKey.TEACHERS] == 20 and metrics["num-examples"] == 400
    ledger = PrivacyLedger(tmp_path / "privacy" / "digits.json", budget_epsilon=100.0)
    assert metrics["dp-epsilon"] == pytest.approx(ledger.spent) and metrics["dp-epsilon"] > 0
    assert metrics["dp-budget-remaining"] == pytest.approx(100.0 - ledger.spent)


def test_the_clientapp_refuses_a_query_its_budget_cannot_pay(tmp_path: Path) -> None:
    reply = _app(tmp_path, budget=0.5)(_query(PUBLIC_X), _context())  # type: ignore[operator]
    assert reply.has_error() and is_budget_refusal(reply.error)


def test_the_clientapp_fails_a_query_with_bad_settings(tmp_path: Path) -> None:
    from flwr.clientapp.client_app import ClientAppException

    with pytest.raises((PateError, ClientAppException)):
        _app(tmp_path, 100.0)(_query(PUBLIC_X, **{PateKey.NOISE: "uniform"}), _context())  # type: ignore[operator]
