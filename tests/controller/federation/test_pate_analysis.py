"""The PATE privacy analysis (controller/federation/pate_analysis.py) against Opacus and the paper's
properties: data-independent GNMax is the Gaussian mechanism with sensitivity sqrt(2), the data-dependent
bound never exceeds it and is far smaller for unanimous votes, the threshold check and LNMax likewise."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from controller.federation import pate_analysis as pa

ORDERS = pa.DEFAULT_ORDERS
UNANIMOUS = np.array([250.0] + [0.0] * 9)
SPLIT = np.array([100.0, 90.0, 30.0, 30.0] + [0.0] * 6)


def _opacus_epsilon(noise_multiplier: float, steps: int, delta: float) -> float:
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = [(noise_multiplier, 1.0, steps)]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the", category=UserWarning)
        return float(accountant.get_epsilon(delta, alphas=list(ORDERS)))


def test_data_independent_gnmax_is_opacus_gaussian_with_sensitivity_sqrt2() -> None:
    from opacus.accountants.analysis.rdp import compute_rdp

    expected = compute_rdp(q=1.0, noise_multiplier=4 / math.sqrt(2), steps=300, orders=list(ORDERS))
    ours = 300 * pa.rdp_data_independent_gaussian(4.0, ORDERS)

    assert np.allclose(ours, expected, rtol=1e-12)
    eps = pa.data_independent_epsilon("gaussian", 4.0, 300, 1e-5)
    assert eps == pytest.approx(_opacus_epsilon(4 / math.sqrt(2), 300, 1e-5), rel=1e-9)
    assert eps == pytest.approx(46.6, abs=0.05)  # the prototype's number (NOTES.md, FedPATE)
    for sigma, queries in ((20.0, 100), (40.0, 300)):
        assert pa.data_independent_epsilon("gaussian", sigma, queries, 1e-5) == pytest.approx(
            _opacus_epsilon(sigma / math.sqrt(2), queries, 1e-5), rel=1e-9
        )


def test_the_conversion_is_opacus_get_privacy_spent() -> None:
    from opacus.accountants.analysis.rdp import get_privacy_spent

    rdp = 50 * pa.rdp_data_independent_gaussian(7.0, ORDERS)
    eps, order = pa.eps_from_rdp(ORDERS, rdp, 1e-6)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the", category=UserWarning)
        expected, best = get_privacy_spent(orders=list(ORDERS), rdp=rdp, delta=1e-6)
    assert eps == pytest.approx(float(expected), rel=1e-12) and order == pytest.approx(float(best))


def test_data_dependent_gnmax_never_exceeds_the_data_independent_bound() -> None:
    rng = np.random.default_rng(3)
    for sigma in (2.0, 10.0, 40.0):
        ind = pa.rdp_data_independent_gaussian(sigma, ORDERS)
        for _ in range(50):
            counts = rng.multinomial(200, rng.dirichlet(np.ones(10) * 0.3)).astype(float)
            dep = pa.rdp_gaussian(pa.logq_gaussian(counts, sigma), sigma, ORDERS)
            assert np.all(dep <= ind + 1e-12) and np.all(dep >= 0)


def test_unanimous_votes_cost_far_less_than_split_votes() -> None:
    def run(counts: np.ndarray) -> dict[str, float]:
        accountant = pa.PateAccountant("gaussian", 20.0, 1e-5)
        for _ in range(300):
            accountant.add(accountant.cost(counts))
        return accountant.summary()

    unanimous, split = run(UNANIMOUS), run(SPLIT)

    assert unanimous["epsilon_data_independent"] == pytest.approx(
        pa.data_independent_epsilon("gaussian", 20.0, 300, 1e-5)
    )
    assert unanimous["epsilon"] < 0.1 * unanimous["epsilon_data_independent"]
    assert split["epsilon"] == pytest.approx(split["epsilon_data_independent"], rel=1e-6)  # gap 10 << sigma
    assert unanimous["queries"] == unanimous["answered"] == 300


def test_logq_follows_the_gap_and_a_certain_outcome_costs_nothing() -> None:
    wide, narrow = np.array([50.0, 0, 0]), np.array([50.0, 45, 0])
    assert pa.logq_gaussian(wide, 5.0) < pa.logq_gaussian(narrow, 5.0) <= math.log(2 / 3)
    assert pa.logq_gaussian(narrow, 5.0, slack=10.0) > pa.logq_gaussian(narrow, 5.0)
    assert np.all(pa.rdp_gaussian(-math.inf, 5.0, ORDERS) == 0.0)
    with pytest.raises(ValueError):
        pa.rdp_gaussian(0.5, 5.0, ORDERS)


def test_the_threshold_check_costs_half_the_gnmax_order_and_less_far_from_the_threshold() -> None:
    ind = pa.rdp_data_independent_threshold(50.0, ORDERS)
    assert np.allclose(ind, ORDERS / (2 * 50.0**2))
    far = pa.rdp_threshold(pa.logpr_answered(300.0, 50.0, [20.0, 0.0]), 50.0, ORDERS)
    near = pa.rdp_threshold(pa.logpr_answered(300.0, 50.0, [300.0, 0.0]), 50.0, ORDERS)
    assert np.all(far <= ind + 1e-12) and np.all(near <= ind + 1e-12)
    assert far.min() < near.min()
    # the distributed check (max of noisy counts): twice the exact check's data-independent cost
    noisy_far = pa.rdp_noisy_max_threshold(np.array([20.0, 5.0, 0.0]), 300.0, 50.0, ORDERS)
    assert np.all(noisy_far <= pa.rdp_data_independent_gaussian(50.0, ORDERS) + 1e-12)
    assert pa.logq_noisy_max_threshold(np.array([20.0, 5.0]), 300.0, 50.0) < math.log(1e-6)
    assert pa.logq_noisy_max_threshold(np.array([300.0, 5.0]), 300.0, 50.0) == pytest.approx(math.log(0.5))


def test_laplace_noisy_max_is_pure_dp_and_cheaper_when_unanimous() -> None:
    scale = 20.0
    ind = pa.rdp_data_independent_laplace(scale, ORDERS)
    eps = 2 / scale
    assert np.allclose(ind, np.minimum(eps, 0.5 * eps * eps * ORDERS))
    dep = pa.rdp_laplace(pa.logq_laplace(UNANIMOUS, scale), scale, ORDERS)
    assert np.all(dep <= ind + 1e-12) and dep.min() < 0.01 * ind.min()
    inexact = pa.PateAccountant("laplace", scale, 1e-5, noise_exact=False)
    assert np.allclose(inexact.cost(UNANIMOUS).rdp, ind)


def test_confident_accounting_charges_the_check_on_every_query_and_gnmax_on_answered_ones() -> None:
    accountant = pa.PateAccountant("gaussian", 10.0, 1e-5, sigma1=40.0, threshold=150.0, check="noisy-max")
    skipped = accountant.cost(SPLIT, answered=False)
    answered = accountant.cost(SPLIT, answered=True)

    assert np.allclose(skipped.rdp_data_independent, ORDERS / 40.0**2)
    assert np.allclose(answered.rdp_data_independent, ORDERS / 40.0**2 + ORDERS / 10.0**2)
    before = accountant.epsilon_with()
    assert before == (0.0, 0.0) and accountant.epsilon_with(answered)[0] > 0.0
    assert accountant.epsilon_with() == before  # a look, no charge
    accountant.add(skipped)
    accountant.add(answered)
    assert (accountant.queries, accountant.answered) == (2, 1)


def test_noise_slack_bounds_every_draw_with_the_stated_probability() -> None:
    slack = pa.noise_slack(10.0, 3000, 1e-3)
    draws = np.random.default_rng(0).normal(0.0, 10.0, (200, 3000))
    rows_out = int((np.abs(draws).max(axis=1) > slack).sum())  # each row: probability <= 1e-3
    assert rows_out <= 2
    assert slack == pytest.approx(10.0 * 5.104, rel=1e-3)  # Phi^-1(1 - 1e-3 / 6000)
    assert pa.noise_slack(10.0, 3000, 1e-6) > slack


@pytest.mark.parametrize(
    "kwargs",
    [
        {"noise": "uniform", "sigma": 1.0, "delta": 1e-5},
        {"noise": "gaussian", "sigma": 0.0, "delta": 1e-5},
        {"noise": "gaussian", "sigma": 1.0, "delta": 1.5},
        {"noise": "gaussian", "sigma": 1.0, "delta": 1e-5, "check": "median"},
    ],
)
def test_the_accountant_refuses_bad_settings(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        pa.PateAccountant(**kwargs)  # type: ignore[arg-type]
