"""Privacy analysis of PATE's noisy vote aggregation (Papernot et al. 2018, "Scalable Private Learning with
PATE", ICLR): Renyi DP of the Gaussian NoisyMax (GNMax) with the data-dependent bound from the vote gaps,
the Confident-GNMax threshold check, the Laplace NoisyMax (LNMax) of the 2017 paper, and the conversion
to ``(epsilon, delta)``. numpy/scipy only; written after tensorflow-privacy's
``research/pate_2018/core.py`` (the formulas and their numbered results are the paper's).

Mechanisms (one query = one public example, ``counts`` = the teachers' vote histogram over the classes):

* GNMax ``argmax_j(n_j + N(0, sigma^2))``: one teacher changing its vote moves two counts by 1 (L2
  sensitivity sqrt(2)), so it is ``(alpha, alpha / sigma^2)``-RDP for every order alpha (Proposition 8,
  :func:`rdp_data_independent_gaussian`; the same as a Gaussian mechanism with noise multiplier
  ``sigma / sqrt(2)``). When the vote's winner is clear, ``q = Pr[outcome != argmax]`` is tiny
  (:func:`logq_gaussian`, Proposition 7: union bound over the gaps) and Theorem 6 gives a much smaller RDP
  (:func:`rdp_gaussian`, the orders mu_1, mu_2 of Proposition 10).
* The threshold check of Confident-GNMax ``max_j n_j + N(0, sigma1^2) >= T``: sensitivity 1, the same
  bounds with ``sqrt(2) sigma1``; its outcome is binary, so ``q = min(Pr[answered], Pr[not answered])``
  (:func:`rdp_threshold`). Every query pays the check; only answered ones pay GNMax.
* LNMax ``argmax_j(n_j + Lap(lambda))``: pure ``2 / lambda``-DP per query; data-dependent RDP from
  Theorem 3 of Papernot et al. 2017 (:func:`rdp_laplace`).

:class:`PateAccountant` sums the RDP of a run query by query (both the data-dependent curve and the
data-independent one) and converts to ``(epsilon, delta)`` with Balle et al. 2020's conversion (Opacus'
``get_privacy_spent``; slightly tighter than Mironov's ``rdp + log(1/delta)/(alpha-1)`` that core.py uses),
so a data-independent GNMax run equals Opacus' RDP accountant for a Gaussian with noise multiplier
``sigma / sqrt(2)``.

Caveat (the paper's too): the data-dependent epsilon is a function of the private votes; publishing it
exactly is not itself covered by the guarantee (the paper releases it through smooth sensitivity, not done
here). The data-independent epsilon is a plain worst-case bound and is always reported beside it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.special
import scipy.stats
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "DEFAULT_ORDERS",
    "PateAccountant",
    "QueryCost",
    "data_independent_epsilon",
    "eps_from_rdp",
    "logpr_answered",
    "logq_gaussian",
    "logq_laplace",
    "logq_noisy_max_threshold",
    "noise_slack",
    "rdp_data_independent_gaussian",
    "rdp_data_independent_laplace",
    "rdp_data_independent_threshold",
    "rdp_gaussian",
    "rdp_laplace",
    "rdp_noisy_max_threshold",
    "rdp_threshold",
]

FloatArray = NDArray[np.float64]

#: Renyi orders: 1.1..1.9 (Opacus' low orders, where large epsilons are optimal), then the paper's analysis
#: scripts' 2..100 by 0.5 and up to 500
DEFAULT_ORDERS: FloatArray = np.concatenate(
    (
        1 + np.arange(1, 10) / 10,
        np.arange(2, 100 + 1, 0.5),
        np.logspace(np.log10(100), np.log10(500), num=100),
    )
).astype(np.float64)


def _orders(orders: ArrayLike) -> FloatArray:
    out = np.atleast_1d(np.asarray(orders, dtype=np.float64))
    if out.ndim != 1 or not np.all(out > 1) or not np.all(np.isfinite(out)):
        raise ValueError("Renyi orders must be finite numbers > 1")
    return out


def _log1mexp(x: float) -> float:
    """log(1 - exp(x)) for x <= 0, stable."""
    if x > 0:
        raise ValueError(f"log1mexp needs x <= 0, got {x}")
    if x == 0:
        return -math.inf
    return math.log1p(-math.exp(x)) if x < -1 else math.log(-math.expm1(x))


def _counts(counts: ArrayLike) -> FloatArray:
    out = np.asarray(counts, dtype=np.float64)
    if out.ndim != 1 or len(out) < 2 or not np.all(np.isfinite(out)):
        raise ValueError("a vote histogram is a finite 1-d array over at least 2 classes")
    return out


def eps_from_rdp(orders: ArrayLike, rdp: ArrayLike, delta: float) -> tuple[float, float]:
    """``(epsilon, best order)`` of an RDP curve at ``delta`` (Balle et al. 2020, Theorem 21:
    ``min rdp + log((alpha-1)/alpha) - (log delta + log alpha)/(alpha-1)``, the conversion Opacus uses)."""
    alphas = _orders(orders)
    values = np.atleast_1d(np.asarray(rdp, dtype=np.float64))
    if values.shape != alphas.shape:
        raise ValueError("orders and rdp must have the same length")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    eps = values - (math.log(delta) + np.log(alphas)) / (alphas - 1) + np.log((alphas - 1) / alphas)
    best = int(np.argmin(eps))
    return float(eps[best]), float(alphas[best])


# --- GNMax ----------------------------------------------------------------------------------------


def logq_gaussian(counts: ArrayLike, sigma: float, slack: float = 0.0) -> float:
    """Upper bound of ``log Pr[GNMax outcome != argmax]`` (Proposition 7, union bound over the gaps).
    ``slack`` > 0: ``counts`` are only known to within ``slack`` each (the noisy aggregate), so every gap
    is taken ``2 slack`` smaller (the likely outcome is then the noisy argmax, which Theorem 6 allows)."""
    votes = _counts(counts)
    if not sigma > 0 or slack < 0:
        raise ValueError(f"sigma must be > 0 and slack >= 0, got {sigma}, {slack}")
    top = int(np.argmax(votes))
    gaps = np.delete(votes[top] - votes, top) - 2.0 * slack
    logq = float(scipy.special.logsumexp(scipy.stats.norm.logsf(gaps, scale=math.sqrt(2.0) * sigma)))
    return min(logq, math.log(1.0 - 1.0 / len(votes)))


def rdp_data_independent_gaussian(sigma: float, orders: ArrayLike = DEFAULT_ORDERS) -> FloatArray:
    """RDP of one GNMax query whatever the votes: ``alpha / sigma^2`` (Proposition 8)."""
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    return _orders(orders) / sigma**2


def rdp_gaussian(logq: float, sigma: float, orders: ArrayLike = DEFAULT_ORDERS) -> FloatArray:
    """Data-dependent RDP of one GNMax query given ``log q`` (Theorem 6 with Proposition 10's orders); never
    above the data-independent curve."""
    alphas = _orders(orders)
    if logq > 0 or not sigma > 0 or math.isnan(logq):
        raise ValueError(f"need log q <= 0 and sigma > 0, got {logq}, {sigma}")
    if math.isinf(logq):  # the outcome is certain: no privacy loss
        return np.zeros_like(alphas)
    variance = sigma**2
    out = alphas / variance
    mu_hi2 = math.sqrt(variance * -logq)
    mu_hi1 = mu_hi2 + 1
    mask = (mu_hi1 > alphas) & (mu_hi2 > 1)
    if not np.any(mask):
        return out
    rdp_hi1, rdp_hi2 = mu_hi1 / variance, mu_hi2 / variance
    log_a2 = (mu_hi2 - 1) * rdp_hi2
    in_range = logq <= log_a2 - mu_hi2 * (math.log1p(1 / (mu_hi1 - 1)) + math.log1p(1 / (mu_hi2 - 1)))
    if not (in_range and -logq > rdp_hi2):  # q outside the range where the bound increases in q
        return out
    log1q = _log1mexp(logq)
    log_a = (alphas - 1) * (log1q - _log1mexp((logq + rdp_hi2) * (1 - 1 / mu_hi2)))
    log_b = (alphas - 1) * (rdp_hi1 - logq / (mu_hi1 - 1))
    log_s = np.logaddexp(log1q + log_a, logq + log_b)
    out[mask] = np.minimum(out, log_s / (alphas - 1))[mask]
    return np.maximum(out, 0.0)


# --- the threshold check (Confident-GNMax) ---------------------------------------------------------


def logpr_answered(threshold: float, sigma1: float, counts: ArrayLike) -> float:
    """``log Pr[max count + N(0, sigma1^2) >= threshold]`` (the max rounded, as core.py does, so the
    bound's smooth-sensitivity analysis would also cover non-integer counts)."""
    if not sigma1 > 0:
        raise ValueError(f"sigma1 must be > 0, got {sigma1}")
    top = float(np.max(_counts(counts)))
    return float(scipy.stats.norm.logsf(threshold - round(top), scale=sigma1))


def rdp_data_independent_threshold(sigma1: float, orders: ArrayLike = DEFAULT_ORDERS) -> FloatArray:
    """RDP of one threshold check whatever the votes (sensitivity 1: GNMax's bound at sqrt(2) sigma1)."""
    return rdp_data_independent_gaussian(math.sqrt(2.0) * sigma1, orders)


def rdp_threshold(log_pr_answered: float, sigma1: float, orders: ArrayLike = DEFAULT_ORDERS) -> FloatArray:
    """Data-dependent RDP of one threshold check: the binary outcome's less likely side is ``q``."""
    logq = min(log_pr_answered, _log1mexp(min(log_pr_answered, 0.0)))
    return rdp_gaussian(logq, math.sqrt(2.0) * sigma1, orders)


def logq_noisy_max_threshold(counts: ArrayLike, threshold: float, sigma1: float, slack: float = 0.0) -> float:
    """``log q`` of the distributed check ``max_j(n_j + N(0, sigma1^2)) >= threshold`` (the check the
    controller can run on the devices' summed noisy histogram, which it sees instead of the exact max):
    the less likely of its two outcomes is at most ``min(Pr[answered], Pr[not answered])`` with
    ``Pr[answered] <= sum_j Pr[n_j + Z_j >= T]`` (union bound) and
    ``Pr[not answered] <= Pr[n_top + Z_top < T]`` (each count taken ``slack`` against the bound)."""
    votes = _counts(counts)
    if not sigma1 > 0 or slack < 0:
        raise ValueError(f"sigma1 must be > 0 and slack >= 0, got {sigma1}, {slack}")
    log_yes = float(scipy.special.logsumexp(scipy.stats.norm.logsf(threshold - votes - slack, scale=sigma1)))
    log_no = float(scipy.stats.norm.logcdf(threshold - float(np.max(votes)) + slack, scale=sigma1))
    return min(log_yes, log_no, math.log(0.5))


def rdp_noisy_max_threshold(
    counts: ArrayLike, threshold: float, sigma1: float, orders: ArrayLike = DEFAULT_ORDERS, slack: float = 0.0
) -> FloatArray:
    """Data-dependent RDP of the distributed check: a post-processing of the Gaussian histogram mechanism
    (L2 sensitivity sqrt(2), so ``alpha / sigma1^2``-RDP, twice the exact-max check's data-independent
    cost) with a binary outcome, bounded with Theorem 6 like GNMax."""
    return rdp_gaussian(logq_noisy_max_threshold(counts, threshold, sigma1, slack), sigma1, orders)


# --- LNMax -----------------------------------------------------------------------------------------


def logq_laplace(counts: ArrayLike, scale: float) -> float:
    """Upper bound of ``log Pr[LNMax outcome != argmax]`` with Laplace noise of ``scale`` (2017, Lemma 4)."""
    votes = _counts(counts)
    if not scale > 0:
        raise ValueError(f"the Laplace scale must be > 0, got {scale}")
    top = int(np.argmax(votes))
    rest = np.delete((votes - votes[top]) / scale, top)  # <= 0
    logq = float(scipy.special.logsumexp(np.log(2 - rest) + math.log(0.25) + rest))
    return min(logq, math.log(1.0 - 1.0 / len(votes)))


def rdp_data_independent_laplace(scale: float, orders: ArrayLike = DEFAULT_ORDERS) -> FloatArray:
    """RDP of one LNMax query whatever the votes: it is pure ``2/scale``-DP, hence
    ``min(eps, alpha eps^2 / 2)``-RDP."""
    if not scale > 0:
        raise ValueError(f"the Laplace scale must be > 0, got {scale}")
    eps = 2.0 / scale
    return np.minimum(0.5 * eps * eps * _orders(orders), eps)


def rdp_laplace(logq: float, scale: float, orders: ArrayLike = DEFAULT_ORDERS) -> FloatArray:
    """Data-dependent RDP of one LNMax query (Papernot et al. 2017, Theorem 3, as core.py's
    ``rdp_pure_eps``), never above the data-independent curve."""
    alphas = _orders(orders)
    eps = 2.0 / scale
    base = rdp_data_independent_laplace(scale, alphas)
    if math.isinf(logq) and logq < 0:
        return np.zeros_like(alphas)
    q = math.exp(logq)
    if q > 1 / (math.exp(eps) + 1):
        return base
    log_one = math.log1p(-q) + (math.log1p(-q) - _log1mexp(eps + logq)) * (alphas - 1)
    log_two = logq + eps * (alphas - 1)
    log_t = np.logaddexp(log_one, log_two)
    out: FloatArray = np.maximum(np.minimum(base, log_t / (alphas - 1)), 0.0)
    return out


# --- a run ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueryCost:
    """What one query added (the threshold check's part and, when answered, the aggregation's)."""

    answered: bool
    rdp: FloatArray
    rdp_data_independent: FloatArray


@dataclass
class PateAccountant:
    """Sums a PATE run's RDP query by query.

    ``noise`` is ``gaussian`` (GNMax, ``sigma`` its standard deviation) or ``laplace`` (LNMax, ``sigma``
    the Laplace scale). ``sigma1`` and ``threshold`` turn on Confident-GNMax's check (``sigma1`` 0: every
    query is answered): ``check="max"`` is the paper's (noise on the exact max count, run by a trusted
    aggregator), ``"noisy-max"`` the distributed one (:func:`rdp_noisy_max_threshold`). ``noise_exact``
    False says the aggregate noise is more than the mechanism's (FedPATE's Laplace: every device adds a full
    ``Lap(sigma)``): the aggregation is then charged its data-independent cost only. ``cost(counts)`` says
    what a query would cost without adding it, so a run can stop before passing a target; ``add`` charges
    it."""

    noise: str
    sigma: float
    delta: float
    sigma1: float = 0.0
    threshold: float = 0.0
    check: str = "max"
    noise_exact: bool = True
    orders: FloatArray = field(default_factory=lambda: DEFAULT_ORDERS.copy())
    rdp: FloatArray = field(init=False)
    rdp_data_independent: FloatArray = field(init=False)
    queries: int = field(default=0, init=False)
    answered: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.check not in ("max", "noisy-max"):
            raise ValueError(f"check is max or noisy-max, not {self.check!r}")
        if self.noise not in ("gaussian", "laplace"):
            raise ValueError(f"noise is gaussian or laplace, not {self.noise!r}")
        if not self.sigma > 0 or self.sigma1 < 0 or not 0 < self.delta < 1:
            raise ValueError("need sigma > 0, sigma1 >= 0 and 0 < delta < 1")
        self.orders = _orders(self.orders)
        self.rdp = np.zeros_like(self.orders)
        self.rdp_data_independent = np.zeros_like(self.orders)

    @property
    def confident(self) -> bool:
        return self.sigma1 > 0

    def _aggregation(self, votes: FloatArray, slack: float) -> tuple[FloatArray, FloatArray]:
        if not self.noise_exact:
            ind = (
                rdp_data_independent_gaussian(self.sigma, self.orders)
                if self.noise == "gaussian"
                else rdp_data_independent_laplace(self.sigma, self.orders)
            )
            return ind, ind
        if self.noise == "gaussian":
            dep = rdp_gaussian(logq_gaussian(votes, self.sigma, slack), self.sigma, self.orders)
            return dep, rdp_data_independent_gaussian(self.sigma, self.orders)
        if slack > 0:
            raise ValueError("the Laplace bound needs the exact votes")
        dep = rdp_laplace(logq_laplace(votes, self.sigma), self.sigma, self.orders)
        return dep, rdp_data_independent_laplace(self.sigma, self.orders)

    def cost(self, counts: ArrayLike, answered: bool = True, slack: float = 0.0) -> QueryCost:
        """The RDP one query adds: the check (when confident) plus, if ``answered``, the aggregation;
        ``counts`` are the exact votes, or (``slack`` > 0) estimates each within ``slack`` of them."""
        votes = _counts(counts)
        if slack > 0 and self.confident and self.check == "max":
            raise ValueError("the exact-max check's bound needs the exact votes")
        dep = np.zeros_like(self.orders)
        ind = np.zeros_like(self.orders)
        if self.confident and self.check == "max":
            dep = dep + rdp_threshold(
                logpr_answered(self.threshold, self.sigma1, votes), self.sigma1, self.orders
            )
            ind = ind + rdp_data_independent_threshold(self.sigma1, self.orders)
        elif self.confident:
            dep = dep + rdp_noisy_max_threshold(votes, self.threshold, self.sigma1, self.orders, slack)
            ind = ind + rdp_data_independent_gaussian(self.sigma1, self.orders)
        if answered:
            agg_dep, agg_ind = self._aggregation(votes, slack)
            dep, ind = dep + agg_dep, ind + agg_ind
        return QueryCost(answered, dep, ind)

    def epsilon_with(self, cost: QueryCost | None = None) -> tuple[float, float]:
        """``(data-dependent, data-independent)`` epsilon so far, plus ``cost`` if given."""
        if cost is None and self.queries == 0:
            return 0.0, 0.0
        dep, ind = self.rdp, self.rdp_data_independent
        if cost is not None:
            dep, ind = dep + cost.rdp, ind + cost.rdp_data_independent
        return eps_from_rdp(self.orders, dep, self.delta)[0], eps_from_rdp(self.orders, ind, self.delta)[0]

    def add(self, cost: QueryCost) -> None:
        self.rdp = self.rdp + cost.rdp
        self.rdp_data_independent = self.rdp_data_independent + cost.rdp_data_independent
        self.queries += 1
        self.answered += int(cost.answered)

    def summary(self) -> dict[str, Any]:
        eps, order = eps_from_rdp(self.orders, self.rdp, self.delta) if self.queries else (0.0, 0.0)
        ind, ind_order = (
            eps_from_rdp(self.orders, self.rdp_data_independent, self.delta) if self.queries else (0.0, 0.0)
        )
        return {
            "epsilon": eps,
            "epsilon_data_independent": ind,
            "delta": self.delta,
            "order": order,
            "order_data_independent": ind_order,
            "queries": self.queries,
            "answered": self.answered,
        }


def noise_slack(sigma: float, counts: int, failure: float) -> float:
    """A bound ``s`` with ``Pr[|Z| > s for any of counts draws of N(0, sigma^2)] <= failure`` (union bound):
    how far the noisy aggregate's counts may be from the exact votes, with probability ``1 - failure``."""
    if not sigma > 0 or counts < 1 or not 0 < failure < 1:
        raise ValueError("need sigma > 0, counts >= 1 and 0 < failure < 1")
    return float(sigma * scipy.stats.norm.isf(failure / (2.0 * counts)))


def data_independent_epsilon(
    noise: str, sigma: float, queries: int, delta: float, *, sigma1: float = 0.0, checked: int | None = None,
    orders: Sequence[float] | FloatArray = DEFAULT_ORDERS,
) -> float:  # fmt: skip
    """Worst-case epsilon of ``queries`` answered queries (and ``checked`` threshold checks, default the
    same number, when ``sigma1`` > 0): what a job plans before it sees any vote."""
    alphas = _orders(orders)
    per = (
        rdp_data_independent_gaussian(sigma, alphas)
        if noise == "gaussian"
        else rdp_data_independent_laplace(sigma, alphas)
    )
    rdp = queries * per
    if sigma1 > 0:
        rdp = rdp + (queries if checked is None else checked) * rdp_data_independent_threshold(sigma1, alphas)
    return eps_from_rdp(alphas, rdp, delta)[0]
