"""SecAgg+ jobs: settings checked against the job; Flower's SecAggPlusWorkflow driving the agent's real
ClientApp (behind Flower's secaggplus_mod) over an in-process grid that copies every message, as a
transport would. The aggregate equals the plaintext FedAvg of the same updates (recomputed here with the
same trainer, seeds and data) within the quantisation bound; a device that drops out after the key
exchange, or whose masked reply is rejected, is left out and the round still aggregates the others;
more dropouts than the threshold allows halt the round and keep the global model."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from flwr.app import Context

from controller.federation.secagg import (
    SecAggConfigError,
    SecAggSettings,
    error_bound,
    resolve_settings,
)
from controller.federation.serverapp import FederationConfig, ListReporter, run_federation
from controller.schemas.fl import FlSecureAggregationIn
from edge_agent.learning.clientapp import DevicePolicy, _seed, make_client_app
from edge_agent.learning.data import LocalData
from edge_agent.learning.models import resolve_factory
from edge_agent.learning.secagg import secagg_mod
from edge_agent.learning.trainer import FitConfig, TorchTrainer
from simulator.fl.appgrid import AppGrid
from tests.controller.federation.fl_helpers import digits

NETWORK, LR, SEED = "digits-linear", 0.5, 3
T = TypeVar("T")


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a ServerApp process has set when Flower builds its messages (simulator.fl.appgrid)."""
    from flwr.supercore.task_identity import TaskIdentity

    for attr, value in (("_run_id", 1), ("_task_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, attr, value)


# --- settings ------------------------------------------------------------------------------------


def _resolve(**over: Any) -> SecAggSettings:
    kw: dict[str, Any] = {"min_clients": 4, "eligible": 5, "strategy": "fedavg", "central_dp": False}
    requested = over.pop("requested", {})
    kw.update(over)
    return resolve_settings(requested, **kw)


def test_defaults_share_with_every_device_of_a_round_and_need_a_majority() -> None:
    settings = _resolve(eligible=4)
    assert (settings.num_shares, settings.reconstruction_threshold) == (4, 3)
    # with more eligible devices than a round needs, an even count drops to the odd one below it
    assert (_resolve().num_shares, _resolve().reconstruction_threshold) == (3, 2)
    assert _resolve(min_clients=5, eligible=8).num_shares == 5
    assert (settings.clipping_range, settings.quantization_range, settings.max_weight) == (8.0, 2**22, 1000.0)
    assert _resolve(min_clients=3).reconstruction_threshold == 2
    assert SecAggSettings.from_json(settings.to_json()) == settings and SecAggSettings.from_json("") is None


@pytest.mark.parametrize(
    ("over", "field", "words"),
    [
        ({"strategy": "krum"}, "strategy.name", "needs each device's update"),
        ({"strategy": "fedmedian"}, "strategy.name", "fedavg, fedavgm, fedprox"),
        ({"central_dp": True}, "privacy.central_dp", "clips each update"),
        ({"min_clients": 2}, "min_clients", "at least 3 devices"),
        (
            {"requested": {"num_shares": 5}},
            "privacy.secure_aggregation.num_shares",
            "between 3 and min_clients",
        ),
        ({"requested": {"num_shares": 4}}, "privacy.secure_aggregation.num_shares", "must be odd unless"),
        (
            {"eligible": 4, "requested": {"num_shares": 4, "reconstruction_threshold": 4}},
            "privacy.secure_aggregation.reconstruction_threshold",
            "3..3 for 4 shares",
        ),
        (
            {"eligible": 4, "requested": {"num_shares": 4, "reconstruction_threshold": 2}},
            "privacy.secure_aggregation.reconstruction_threshold",
            "more than half",
        ),
        (
            {"requested": {"quantization_range": 2**30}},
            "privacy.secure_aggregation.quantization_range",
            "below 2**32",
        ),
        ({"requested": {"max_weight": float("nan")}}, "privacy.secure_aggregation.max_weight", "finite"),
        ({"requested": {"clipping_range": 0.0}}, "privacy.secure_aggregation.clipping_range", "> 0"),
    ],
)
def test_a_combination_that_cannot_work_is_refused_with_its_field(
    over: dict[str, Any], field: str, words: str
) -> None:
    with pytest.raises(SecAggConfigError) as info:
        _resolve(**over)
    assert info.value.field == field and words in str(info.value)


def test_the_schema_refuses_a_threshold_outside_the_majority_band() -> None:
    from pydantic import ValidationError

    assert FlSecureAggregationIn(num_shares=5, reconstruction_threshold=3).reconstruction_threshold == 3
    for shares, threshold in ((5, 5), (5, 2), (3, 1)):
        with pytest.raises(ValidationError):
            FlSecureAggregationIn(num_shares=shares, reconstruction_threshold=threshold)
    with pytest.raises(ValidationError):
        FlSecureAggregationIn(num_shares=2)
    with pytest.raises(ValidationError):
        FlSecureAggregationIn(max_weight=0)
    with pytest.raises(ValidationError):
        FlSecureAggregationIn(unknown=1)  # type: ignore[call-arg]


def test_a_malformed_run_config_value_is_refused() -> None:
    with pytest.raises(ValueError, match="not a SecAgg"):
        SecAggSettings.from_json("{}")
    with pytest.raises(ValueError, match="unexpected keys"):
        SecAggSettings.from_json(json.dumps({**json.loads(_resolve().to_json()), "extra": 1}))


# --- the protocol against the real ClientApp ----------------------------------------------------


def _const(value: T) -> Callable[[Context], T]:
    return lambda _context: value


def _shard(k: int, n: int) -> LocalData:
    x, y = digits()
    start = 300 * k
    return LocalData(x[start : start + n], y[start : start + n], x[-200:], y[-200:])


def _federation(
    sizes: list[int], tmp: Path, *, require_dp: tuple[int, ...] = (), budgets: tuple[float, ...] = ()
) -> tuple[AppGrid, dict[int, LocalData]]:
    data = {100 + k: _shard(k, n) for k, n in enumerate(sizes)}
    apps = {}
    for node, local in data.items():
        apps[node] = make_client_app(
            load_data=_const(local),
            state_dir_for=_const(tmp / f"node-{node}"),
            policy_for=_const(
                DevicePolicy(
                    "digits",
                    budget_epsilon=budgets[node - 100] if budgets else 0.0,
                    require_dp=node - 100 in require_dp,
                )
            ),
            mods=[secagg_mod],
        )
    return AppGrid(apps), data


def _run(
    grid: AppGrid, settings: SecAggSettings, min_nodes: int, tmp: Path, **extra: Any
) -> tuple[Any, ListReporter]:
    config = FederationConfig.from_run_config(
        {
            "num-server-rounds": 1,
            "min-nodes": min_nodes,
            "model": NETWORK,
            "seed": SEED,
            "lr": LR,
            "output-path": str(tmp / "final.npz"),
            "secure-aggregation": settings.to_json(),
            **extra,
        }
    )
    reporter = ListReporter()
    result = run_federation(grid, config, reporter, run_id=1)  # type: ignore[arg-type]
    return result, reporter


def _initial() -> dict[str, np.ndarray]:
    model = resolve_factory(NETWORK)(SEED)
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _plaintext_fedavg(
    data: dict[int, LocalData], nodes: list[int]
) -> tuple[dict[str, np.ndarray], list[int]]:
    """What each surviving device trains in round 1 (same trainer, seed and data), averaged by examples."""
    fits = []
    for node in nodes:
        cfg = FitConfig(epochs=1, batch_size=32, lr=LR, seed=_seed(SEED, 1, node))
        fits.append(TorchTrainer(resolve_factory(NETWORK), data[node]).fit(_initial(), cfg))
    weights = [f.num_examples for f in fits]
    mean = {
        k: np.sum([w * f.params[k].astype(np.float64) for w, f in zip(weights, fits, strict=True)], axis=0)
        / sum(weights)
        for k in fits[0].params
    }
    return mean, weights


def _assert_matches(
    result: Any, expected: dict[str, np.ndarray], settings: SecAggSettings, weights: list[int]
) -> None:
    got = {k: v.numpy() for k, v in result.arrays.items()}
    assert set(got) == set(expected)
    max_abs = max(float(np.abs(v).max()) for v in expected.values())
    bound = error_bound(settings, weights, max_abs) + 1e-6  # plus float32 rounding of the result
    worst = max(float(np.abs(got[k] - expected[k]).max()) for k in got)
    assert worst <= bound, (worst, bound)
    assert worst > 0  # quantised and masked, not the plaintext sum passed through
    initial = _initial()
    assert max(float(np.abs(got[k] - initial[k]).max()) for k in got) > 100 * bound  # it trained


def test_a_secagg_round_equals_plaintext_fedavg_within_the_quantisation_bound(tmp_path: Path) -> None:
    grid, data = _federation([300, 260, 200], tmp_path)
    settings = _resolve(min_clients=3, eligible=3)
    result, reporter = _run(grid, settings, 3, tmp_path)
    expected, weights = _plaintext_fedavg(data, sorted(data))
    _assert_matches(result, expected, settings, weights)
    train = next(r for r in reporter.rounds if r.kind == "train")
    assert train.participants == 3 and train.failures == 0 and train.rejected == []
    assert sorted(c["node_id"] for c in train.clients) == sorted(data)
    assert {c["metrics"]["num-examples"] for c in train.clients} == {300, 260, 200}
    assert train.bytes_sent > 0 and train.bytes_received > 0
    assert grid.messages["train"] == dict.fromkeys(data, 4)  # setup, share keys, masked vector, unmask
    evaluate = next(r for r in reporter.rounds if r.kind == "evaluate")
    assert evaluate.participants == 3 and 0 <= evaluate.metrics["eval_accuracy"] <= 1
    assert (tmp_path / "final.npz").exists()


def test_a_device_dropping_out_after_the_key_exchange_leaves_the_others_aggregated(tmp_path: Path) -> None:
    # 4 devices, threshold 3: the device that refuses rounds without DP drops at the masked-vector stage,
    # after its keys and shares went out; the survivors' pairwise masks with it are rebuilt from shares
    grid, data = _federation([300, 260, 200, 240], tmp_path, require_dp=(3,))
    settings = _resolve(min_clients=4, eligible=4, requested={"num_shares": 4, "reconstruction_threshold": 3})
    result, reporter = _run(grid, settings, 4, tmp_path)
    survivors = [100, 101, 102]
    expected, weights = _plaintext_fedavg(data, survivors)
    _assert_matches(result, expected, settings, weights)
    train = next(r for r in reporter.rounds if r.kind == "train")
    assert train.participants == 3 and train.failures == 1 and train.budget_refused == []
    assert sorted(c["node_id"] for c in train.clients) == survivors
    assert grid.messages["train"][103] == 3  # setup, share keys, then its refusal; no unmask
    evaluate = next(r for r in reporter.rounds if r.kind == "evaluate")
    assert evaluate.participants == 4


def test_a_masked_reply_over_max_weight_is_rejected_and_treated_as_a_dropout(tmp_path: Path) -> None:
    grid, data = _federation([300, 260, 200, 420], tmp_path)
    settings = _resolve(min_clients=4, eligible=4, requested={"max_weight": 400.0})
    result, reporter = _run(grid, settings, 4, tmp_path)
    expected, weights = _plaintext_fedavg(data, [100, 101, 102])
    _assert_matches(result, expected, settings, weights)
    train = next(r for r in reporter.rounds if r.kind == "train")
    assert train.participants == 3 and train.failures == 0
    assert [r["node_id"] for r in train.rejected] == [103] and "max_weight=400" in train.rejected[0]["reason"]


def test_more_dropouts_than_the_threshold_allows_halt_the_round_and_keep_the_model(tmp_path: Path) -> None:
    grid, _ = _federation([300, 260, 200, 240], tmp_path, require_dp=(2, 3))
    settings = _resolve(min_clients=4, eligible=4, requested={"num_shares": 4, "reconstruction_threshold": 3})
    result, reporter = _run(grid, settings, 4, tmp_path)
    train = next(r for r in reporter.rounds if r.kind == "train")
    assert train.participants == 0 and train.failures == 2 and train.metrics == {}
    assert 0 not in result.train_metrics_clientapp and 1 not in result.train_metrics_clientapp
    initial = _initial()
    saved = np.load(tmp_path / "final.npz")
    assert all(np.array_equal(saved[k], initial[k]) for k in initial)  # the global model was kept


def test_an_odd_neighbourhood_smaller_than_the_round_still_aggregates_everyone(tmp_path: Path) -> None:
    # 5 devices, 3 shares each (a ring of neighbourhoods of 3), threshold 2: the sum still has all five
    grid, data = _federation([200, 220, 240, 260, 280], tmp_path)
    settings = _resolve(min_clients=5, eligible=5, requested={"num_shares": 3})
    result, reporter = _run(grid, settings, 5, tmp_path)
    expected, weights = _plaintext_fedavg(data, sorted(data))
    _assert_matches(result, expected, settings, weights)
    assert next(r for r in reporter.rounds if r.kind == "train").participants == 5


def test_local_dp_composes_and_a_budget_refusal_after_the_key_exchange_is_counted_as_one(
    tmp_path: Path,
) -> None:
    # DP-SGD on every device, then masking; the fourth device's budget cannot pay for the round: its
    # refusal (an error reply, not a crash) comes after its keys went out, and the others are aggregated
    grid, _ = _federation([300, 260, 200, 240], tmp_path, budgets=(20.0, 20.0, 20.0, 0.01))
    settings = _resolve(min_clients=4, eligible=4, requested={"num_shares": 4, "reconstruction_threshold": 3})
    result, reporter = _run(grid, settings, 4, tmp_path, **{"dp-target-epsilon": 5.0})
    train = next(r for r in reporter.rounds if r.kind == "train")
    assert train.participants == 3 and train.budget_refused == [103] and train.failures == 0
    assert sorted(c["node_id"] for c in train.clients) == [100, 101, 102]
    assert all(0 < c["metrics"]["dp-epsilon"] <= 5.0 for c in train.clients)
    assert 0 < train.metrics["dp-epsilon-max"] <= 5.0
    initial = _initial()
    assert max(float(np.abs(result.arrays[k].numpy() - initial[k]).max()) for k in initial) > 1e-3
