"""Local DP-SGD: the noise chosen for a planned run keeps its epsilon within the target, the accountant
continues across fits, and the known Opacus/torch warnings are silenced only where we train."""

from __future__ import annotations

import warnings

import pytest

from edge_agent.learning import dp
from edge_agent.learning.data import LocalData
from edge_agent.learning.models import resolve_factory
from edge_agent.learning.trainer import DPSettings, FitConfig, TorchTrainer
from simulator.fl.partition import load_digits_arrays

DELTA = 1e-5


def _trainer(n: int = 140) -> TorchTrainer:
    x, y = load_digits_arrays()
    return TorchTrainer(
        resolve_factory("digits-linear"), LocalData(x[:n], y[:n], x[n : n + 200], y[n : n + 200])
    )


def test_the_planned_run_spends_at_most_its_target_epsilon() -> None:
    trainer = _trainer()
    rounds, epochs, batch = 3, 1, 32
    sample_rate, steps = dp.sample_rate_and_steps(trainer.num_examples, batch, epochs)
    sigma = dp.noise_multiplier_for(3.0, DELTA, sample_rate, steps * rounds)
    params, state, epsilons = trainer.initial_params(), None, []

    for _ in range(rounds):  # the accountant continues from the previous round's state
        settings = DPSettings(noise_multiplier=sigma, max_grad_norm=1.0, delta=DELTA, accountant_state=state)
        result = trainer.fit(params, FitConfig(epochs=epochs, batch_size=batch, lr=0.5, dp=settings))
        assert result.privacy is not None
        params, state = result.params, result.privacy.accountant_state
        epsilons.append(result.privacy.epsilon)

    assert result.privacy.steps == steps
    assert state["history"] == [[sigma, sample_rate, steps * rounds]]
    assert epsilons == sorted(epsilons)
    assert 2.5 < epsilons[-1] <= 3.0  # the whole run, not one round, is within the target


def test_epsilon_after_matches_the_accountant_of_a_real_fit() -> None:
    trainer = _trainer()
    sample_rate, steps = dp.sample_rate_and_steps(trainer.num_examples, 32, 2)
    predicted, state = dp.epsilon_after(None, DELTA, 1.5, sample_rate, steps)

    result = trainer.fit(
        trainer.initial_params(), FitConfig(epochs=2, batch_size=32, dp=DPSettings(1.5, 1.0, DELTA))
    )

    assert result.privacy is not None
    assert result.privacy.accountant_state["history"] == [list(e) for e in state["history"]]
    assert result.privacy.epsilon == pytest.approx(predicted)


def test_an_unreachable_target_and_unknown_accountants_are_refused() -> None:
    with pytest.raises(dp.DPError, match="out of reach"):
        dp.noise_multiplier_for(1e-4, DELTA, 1.0, 10_000)
    with pytest.raises(dp.DPError, match="gdp"):
        dp.noise_multiplier_for(3.0, DELTA, 0.1, 100, accountant="gdp")


def test_private_training_raises_no_warning_under_warnings_as_errors() -> None:
    trainer = _trainer()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # what pytest's filterwarnings = error does, made explicit
        result = trainer.fit(
            trainer.initial_params(), FitConfig(epochs=1, batch_size=16, dp=DPSettings(1.0, 1.0, DELTA))
        )
    assert result.privacy is not None and result.privacy.steps == 9


def test_the_filter_is_local_to_the_block() -> None:
    with dp.quiet_opacus():
        warnings.warn("Secure RNG turned off. This is fine for experiments", UserWarning, stacklevel=1)
    with pytest.raises(UserWarning, match="Secure RNG"), warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.warn("Secure RNG turned off. This is fine for experiments", UserWarning, stacklevel=1)
    assert dp.is_known_warning("Optimal order is the largest alpha. Please consider expanding the range")
    assert not dp.is_known_warning("something else entirely")
