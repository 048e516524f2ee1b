"""Local differential privacy (example-level DP-SGD) with Opacus: ghost clipping and accounting.

* Training is made private with ``grad_sample_mode="ghost"`` (fast gradient clipping: the per-example
  gradient norms come from a second backward pass instead of materialised per-example gradients, several
  times cheaper than Opacus' default hooks for wide layers) and Poisson sampling; the criterion is handed
  to ``make_private``, which returns the wrapped loss.
* The noise multiplier of a job is chosen once from its target epsilon over the **planned run** (every
  step of every round: ``rounds x local epochs x batches per epoch``) with Opacus'
  ``get_noise_multiplier``; the PRV accountant is the default (the tightest bound Opacus has that is not
  experimental; ``rdp`` is the alternative, ``gdp`` is refused because it can underestimate).
* The accountant continues from a persisted ``state_dict()`` (the device's privacy ledger), so every
  step the device ever took on a dataset is in one history.

The UserWarnings Opacus and torch emit on every private run (insecure RNG, the full backward hook firing
without input gradients, RDP's optimal order, GDP being experimental) are silenced only inside
:func:`quiet_opacus`, locally, so a caller running with warnings as errors is not tripped by them.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import re
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

__all__ = [
    "ACCOUNTANTS",
    "DPError",
    "PrivateTraining",
    "epsilon_after",
    "epsilon_of",
    "make_private",
    "noise_multiplier_for",
    "quiet_opacus",
    "sample_rate_and_steps",
]

ACCOUNTANTS = ("prv", "rdp")
AccountantState = dict[str, Any]

# (message regex, where it comes from)
_KNOWN_WARNINGS = (
    r"Secure RNG turned off",  # opacus.PrivacyEngine without secure_mode
    r"Full backward hook is firing when gradients are computed with respect to module outputs",  # torch
    r"Optimal order is the (largest|smallest) alpha",  # opacus RDP accountant
    r"GDP accounting is experimental",  # opacus GDP accountant
    r"Using a non-full backward hook when the forward contains multiple autograd Nodes",  # torch
)


class DPError(ValueError):
    """Private training cannot be set up as asked (bad parameters, unsupported accountant)."""


@contextlib.contextmanager
def quiet_opacus() -> Iterator[None]:
    """Silence the known Opacus/torch UserWarnings of private training inside the block only, and
    numpy's floating-point warnings of the PRV accountant's tails (``log(1 - q)`` at sample rate 1,
    ``exp`` overflow at large epsilon; the results are checked for finiteness instead)."""
    with warnings.catch_warnings(), np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        for pattern in _KNOWN_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern, category=UserWarning)
        yield


def _check_accountant(name: str) -> str:
    if name not in ACCOUNTANTS:
        raise DPError(f"unknown or unsupported accountant {name!r} (use one of {', '.join(ACCOUNTANTS)})")
    return name


def sample_rate_and_steps(num_examples: int, batch_size: int, epochs: int) -> tuple[float, int]:
    """Poisson sample rate and steps of ``epochs`` local epochs, as Opacus' data loader will run them."""
    if num_examples <= 0 or batch_size <= 0 or epochs <= 0:
        raise DPError("num_examples, batch_size and epochs must be positive")
    batches = math.ceil(num_examples / batch_size)
    return 1.0 / batches, batches * epochs


def noise_multiplier_for(
    target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str = "prv"
) -> float:
    """The smallest noise multiplier (Opacus' binary search) that keeps ``steps`` steps within
    ``(target_epsilon, delta)``."""
    from opacus.accountants.utils import get_noise_multiplier

    if not target_epsilon > 0 or not 0 < delta < 1:
        raise DPError(f"need target epsilon > 0 and 0 < delta < 1, got {target_epsilon}, {delta}")
    with quiet_opacus():
        try:
            return float(
                get_noise_multiplier(
                    target_epsilon=target_epsilon,
                    target_delta=delta,
                    sample_rate=sample_rate,
                    steps=steps,
                    accountant=_check_accountant(accountant),
                )
            )
        except (ValueError, OverflowError) as exc:  # "The privacy budget is too low."
            raise DPError(f"epsilon {target_epsilon} is out of reach over {steps} steps: {exc}") from exc


def _accountant(name: str, state: Mapping[str, Any] | None) -> Any:
    from opacus.accountants import create_accountant

    acc = create_accountant(mechanism=_check_accountant(name))
    if state:
        acc.load_state_dict(_as_state(state))
    return acc


def _as_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """A persisted (JSON) accountant state back in Opacus' form: history entries as tuples."""
    out = dict(copy.deepcopy(state))
    out["history"] = [(float(s), float(q), int(n)) for s, q, n in out.get("history", [])]
    return out


def epsilon_of(state: Mapping[str, Any] | None, delta: float, accountant: str = "prv") -> float:
    """Epsilon (at ``delta``) of an accountant state; 0 for no steps."""
    if not state or not state.get("history"):
        return 0.0
    with quiet_opacus():
        epsilon = float(_accountant(accountant, state).get_epsilon(delta))
    if math.isnan(epsilon):
        raise DPError(f"the {accountant} accountant gave no epsilon for {state.get('history')}")
    return epsilon


def epsilon_after(
    state: Mapping[str, Any] | None,
    delta: float,
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    accountant: str = "prv",
) -> tuple[float, AccountantState]:
    """Epsilon after ``steps`` more steps at ``(noise_multiplier, sample_rate)``, and that state."""
    acc = _accountant(accountant, state)
    entry = (float(noise_multiplier), float(sample_rate))
    if acc.history and tuple(acc.history[-1][:2]) == entry:  # merged as Opacus' own step() does
        acc.history[-1] = (*entry, int(acc.history[-1][2]) + int(steps))
    else:
        acc.history.append((*entry, int(steps)))
    new_state: AccountantState = acc.state_dict()
    return epsilon_of(new_state, delta, accountant), new_state


@dataclass
class PrivateTraining:
    """The private counterparts of a training loop's objects, plus the engine that accounts them."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    criterion: Any
    loader: DataLoader[Any]
    engine: Any
    accountant: str

    def epsilon(self, delta: float) -> float:
        """Epsilon so far, over the loaded history and every step taken since."""
        return epsilon_of(self.state_dict(), delta, self.accountant)

    def state_dict(self) -> AccountantState:
        state: AccountantState = self.engine.accountant.state_dict()
        state["history"] = [list(entry) for entry in state["history"]]
        return state


def make_private(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader[Any],
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    accountant: str = "prv",
    accountant_state: Mapping[str, Any] | None = None,
    criterion: nn.Module | None = None,
) -> PrivateTraining:
    """Wrap model, optimizer, criterion and loader for DP-SGD with ghost clipping (Poisson sampling),
    the accountant continuing from ``accountant_state``. Run the training loop inside
    :func:`quiet_opacus`.

    The noise and the Poisson batches come from a generator seeded from ``os.urandom``, never from a job
    seed: whoever knows the seed of the noise can subtract it, and the server knows the job's seed."""
    from opacus import PrivacyEngine
    from opacus.validators import ModuleValidator

    if not noise_multiplier > 0 or not max_grad_norm > 0:
        raise DPError("noise multiplier and max grad norm must be positive")
    problems = ModuleValidator.validate(model, strict=False)
    if problems:
        raise DPError(f"the network cannot be trained privately: {problems}")
    generator = torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little"))
    loader = DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        shuffle=True,
        generator=generator,
        collate_fn=loader.collate_fn,
    )
    with quiet_opacus():
        engine = PrivacyEngine(accountant=_check_accountant(accountant))
        if accountant_state:
            engine.accountant.load_state_dict(_as_state(accountant_state))
        out = engine.make_private(
            module=model,
            optimizer=optimizer,
            criterion=criterion if criterion is not None else nn.CrossEntropyLoss(),
            data_loader=loader,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            grad_sample_mode="ghost",
            poisson_sampling=True,
            noise_generator=generator,
        )
    private_model, private_optimizer, private_criterion, private_loader = out
    return PrivateTraining(
        model=private_model,
        optimizer=private_optimizer,
        criterion=private_criterion,
        loader=private_loader,
        engine=engine,
        accountant=accountant,
    )


def is_known_warning(message: str) -> bool:
    """True for a warning :func:`quiet_opacus` silences (used by tests)."""
    return any(re.search(pattern, message) for pattern in _KNOWN_WARNINGS)
