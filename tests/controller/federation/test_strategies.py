"""Declarative strategy specs -> Flower's own strategies; anything unknown is refused by name."""

from __future__ import annotations

import pytest
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    Krum,
    MultiKrum,
)

from controller.federation.strategies import StrategySpecError, build_strategy, parse_spec


@pytest.mark.parametrize(
    ("spec", "cls", "attrs"),
    [
        ("fedavg", FedAvg, {}),
        ({"name": "fedprox", "proximal_mu": 0.01}, FedProx, {"proximal_mu": 0.01}),
        ({"name": "fedtrimmedavg", "beta": 0.1}, FedTrimmedAvg, {"beta": 0.1}),
        (
            {"name": "krum", "num_malicious_nodes": 1},
            Krum,
            {"num_malicious_nodes": 1, "num_nodes_to_select": 1},
        ),
        (
            {"name": "multikrum", "num-malicious-nodes": 1, "num-nodes-to-select": 3},
            MultiKrum,
            {"num_malicious_nodes": 1, "num_nodes_to_select": 3},
        ),
        ({"name": "FedMedian"}, FedMedian, {}),
        (
            '{"name": "fedavgm", "server_momentum": 0.9, "server_learning_rate": 1.0}',
            FedAvgM,
            {"server_momentum": 0.9, "server_learning_rate": 1.0},
        ),
    ],
)
def test_each_spec_builds_flowers_own_strategy(spec: object, cls: type, attrs: dict[str, object]) -> None:
    strategy = build_strategy(spec, min_available_nodes=10)  # type: ignore[arg-type]

    assert type(strategy) is cls
    assert strategy.min_available_nodes == 10  # type: ignore[attr-defined]
    for key, value in attrs.items():
        assert getattr(strategy, key) == value


def test_the_spec_wins_over_defaults_and_sampling_is_typed() -> None:
    strategy = build_strategy(
        {"name": "fedavg", "min_available_nodes": 3, "fraction_train": 0.5}, min_available_nodes=10
    )
    assert (strategy.min_available_nodes, strategy.fraction_train) == (3, 0.5)  # type: ignore[attr-defined]
    with pytest.raises(StrategySpecError, match="min_train_nodes must be a whole number"):
        parse_spec({"name": "fedavg", "min_train_nodes": 2.5})
    with pytest.raises(StrategySpecError, match="fraction_train must be a number"):
        parse_spec({"name": "fedavg", "fraction_train": "all"})


def test_central_dp_wraps_the_strategy_in_flowers_dp_wrappers() -> None:
    fixed = build_strategy(
        {
            "name": "fedavg",
            "central_dp": {"noise_multiplier": 1.0, "clipping_norm": 5.0, "num_sampled_clients": 10},
        }
    )
    adaptive = build_strategy(
        {
            "name": "fedprox",
            "proximal_mu": 0.1,
            "central_dp": {"clipping": "adaptive", "noise_multiplier": 0.1, "num_sampled_clients": 10},
        }
    )

    assert isinstance(fixed, DifferentialPrivacyServerSideFixedClipping)
    assert (fixed.noise_multiplier, fixed.clipping_norm, type(fixed.strategy)) == (1.0, 5.0, FedAvg)
    assert isinstance(adaptive, DifferentialPrivacyServerSideAdaptiveClipping)
    assert type(adaptive.strategy) is FedProx


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"name": "fedsgd"}, "unknown strategy 'fedsgd'"),
        ({"proximal_mu": 0.1}, "unknown strategy None"),
        ({"name": "fedavg", "proximal_mu": 0.1}, "fedavg: unknown parameter 'proximal_mu'"),
        ({"name": "fedprox", "mu": 0.1, "beta": 0.2}, "fedprox: unknown parameters 'beta', 'mu'"),
        (
            {"name": "fedavg", "central_dp": {"noise_multiplier": 1.0}},
            "missing clipping_norm, num_sampled_clients",
        ),
        (
            {"name": "fedavg", "central_dp": {"clipping": "fixed", "noise": 1.0}},
            "central_dp \\(fixed\\): unknown parameter 'noise'",
        ),
        ({"name": "fedavg", "central_dp": {"clipping": "client"}}, "unknown clipping 'client'"),
        ("{not json", "not valid JSON"),
        ({"name": "fedtrimmedavg", "beta": 0.7}, "fedtrimmedavg: `beta` must be in the range"),
        ({"name": "fedavg", "fraction_train": float("nan")}, "must be finite"),
        (
            {
                "name": "fedavg",
                "central_dp": {"clipping": "adaptive", "noise_multiplier": 1.0, "num_sampled_clients": 10},
            },
            "clipped_count_stddev",  # Flower's own check, surfaced as a spec error
        ),
    ],
)
def test_unknown_names_parameters_and_values_are_refused_by_name(spec: object, message: str) -> None:
    with pytest.raises(StrategySpecError, match=message) as refused:
        build_strategy(spec)  # type: ignore[arg-type]
    assert isinstance(refused.value, ValueError)  # the job API maps it to 422
