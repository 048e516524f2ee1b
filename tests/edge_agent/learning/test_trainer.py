"""The torch trainer (no Flower): it learns, takes lists or name->array mappings, refuses parameters of
the wrong shape, pulls towards the global model under FedProx, and loads networks by name or path."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
from torch import nn

from edge_agent.learning.data import LocalData
from edge_agent.learning.models import ModelError, build_model, resolve_factory
from edge_agent.learning.trainer import FitConfig, TorchTrainer, TrainerError
from simulator.fl.partition import load_digits_arrays


@pytest.fixture(scope="module")
def trainer() -> TorchTrainer:
    x, y = load_digits_arrays()
    return TorchTrainer(resolve_factory("digits-mlp"), LocalData(x[:400], y[:400], x[1400:], y[1400:]))


def test_local_training_improves_held_out_accuracy(trainer: TorchTrainer) -> None:
    start = trainer.initial_params(seed=0)

    result = trainer.fit(start, FitConfig(epochs=5, batch_size=16, lr=0.1, momentum=0.9))

    assert result.num_examples == 400
    assert result.privacy is None
    assert result.metrics["steps"] == 5 * 25
    assert trainer.evaluate(result.params).accuracy > trainer.evaluate(start).accuracy + 0.5
    assert trainer.evaluate(result.params).accuracy > 0.85
    assert list(result.params) == list(start)  # same names, same order as the network's state_dict


def test_a_list_in_state_dict_order_and_a_mapping_give_the_same_fit(trainer: TorchTrainer) -> None:
    start = trainer.initial_params(seed=1)
    config = FitConfig(epochs=1, batch_size=32, lr=0.1, seed=7)

    by_name = trainer.fit(start, config)
    by_order = trainer.fit(list(start.values()), config)

    for name in start:
        np.testing.assert_array_equal(by_name.params[name], by_order.params[name])


def test_parameters_of_another_shape_are_refused(trainer: TorchTrainer) -> None:
    start = trainer.initial_params()
    wrong = dict(start)
    name = next(iter(wrong))
    wrong[name] = np.zeros((3, 3), dtype=np.float32)

    with pytest.raises(TrainerError, match=f"{name}: expected shape"):
        trainer.fit(wrong, FitConfig())
    with pytest.raises(TrainerError, match="missing"):
        trainer.evaluate({k: v for k, v in start.items() if k != name})
    with pytest.raises(TrainerError, match="tensors"):
        trainer.fit(list(start.values())[:-1], FitConfig())


def test_the_proximal_term_keeps_the_update_close_to_the_global_model(trainer: TorchTrainer) -> None:
    start = trainer.initial_params(seed=2)

    def drift(mu: float) -> float:
        params = trainer.fit(start, FitConfig(epochs=2, batch_size=16, lr=0.1, proximal_mu=mu, seed=3)).params
        return float(sum(np.sum((params[k] - start[k]) ** 2) for k in start))

    assert drift(5.0) < 0.5 * drift(0.0)


def test_bad_fit_configs_are_refused() -> None:
    with pytest.raises(TrainerError):
        FitConfig(epochs=0)
    with pytest.raises(TrainerError):
        FitConfig(lr=0.0)


def test_networks_by_name_and_from_a_training_package() -> None:
    package = types.ModuleType("fedge_test_package")

    def network(seed: int) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

    package.network = network  # type: ignore[attr-defined]
    package.not_a_network = 3  # type: ignore[attr-defined]
    sys.modules["fedge_test_package"] = package
    try:
        custom = build_model("fedge_test_package:network", seed=4)
        assert isinstance(custom, nn.Sequential)
        same = build_model("fedge_test_package:network", seed=4)
        for a, b in zip(custom.parameters(), same.parameters(), strict=True):
            assert bool((a == b).all())  # one seed, one initialisation, on every node
        with pytest.raises(ModelError, match="not a callable"):
            resolve_factory("fedge_test_package:not_a_network")
    finally:
        del sys.modules["fedge_test_package"]
    with pytest.raises(ModelError, match="unknown network 'resnet'"):
        resolve_factory("resnet")
    with pytest.raises(ModelError, match="cannot import"):
        resolve_factory("no_such_package_here:net")
