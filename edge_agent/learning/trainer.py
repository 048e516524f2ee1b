"""Local training on a device, knowing nothing of Flower: a :class:`Trainer` protocol and a torch one.

``fit`` starts from the global parameters (a list in the network's ``state_dict`` order, or a
name -> array mapping), trains locally and returns the new parameters with the number of examples,
metrics and, when local DP is on, a :class:`PrivacyReport`. ``evaluate`` scores parameters on the local
evaluation split. FedProx's proximal term ``mu/2 ||w - w_global||^2`` is applied as a decoupled step
after each optimizer step (``w -= lr * mu * (w - w_global)``): it touches no data, so under DP-SGD it is
post-processing and costs no privacy, and with plain SGD it is the gradient of that term.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from edge_agent.learning import dp
from edge_agent.learning.data import LocalData

__all__ = [
    "DPSettings",
    "EvalResult",
    "FitConfig",
    "FitResult",
    "Params",
    "PrivacyReport",
    "TorchTrainer",
    "Trainer",
    "TrainerError",
]

Params = Sequence[NDArray[Any]] | Mapping[str, NDArray[Any]]


class TrainerError(ValueError):
    """Parameters that do not fit the network, or a configuration that cannot be trained."""


@dataclass(frozen=True)
class DPSettings:
    """Example-level DP-SGD for one fit: the job's noise, the clipping norm, the accountant to continue."""

    noise_multiplier: float
    max_grad_norm: float
    delta: float
    accountant: str = "prv"
    accountant_state: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class FitConfig:
    """What one local fit does."""

    epochs: int = 1
    batch_size: int = 32
    lr: float = 0.1
    momentum: float = 0.0
    proximal_mu: float = 0.0
    seed: int = 0
    dp: DPSettings | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise TrainerError("epochs and batch size must be at least 1")
        if not self.lr > 0 or self.momentum < 0 or self.proximal_mu < 0:
            raise TrainerError("lr must be positive; momentum and proximal mu non-negative")


@dataclass(frozen=True)
class PrivacyReport:
    """What a private fit spent: the steps of this fit and the accountant state to persist; ``epsilon``
    is the accountant's over its whole history (the device's, on this dataset) at ``delta``."""

    delta: float
    noise_multiplier: float
    sample_rate: float
    steps: int
    accountant: str
    accountant_state: dict[str, Any]

    @functools.cached_property
    def epsilon(self) -> float:
        """Computed on first use (a PRV evaluation takes a fraction of a second)."""
        return dp.epsilon_of(self.accountant_state, self.delta, self.accountant)


@dataclass(frozen=True)
class FitResult:
    params: dict[str, NDArray[Any]]
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)
    privacy: PrivacyReport | None = None


@dataclass(frozen=True)
class EvalResult:
    loss: float
    accuracy: float
    num_examples: int


class Trainer(Protocol):
    """Local training and evaluation on the device's own data."""

    def fit(self, global_params: Params, config: FitConfig) -> FitResult: ...

    def evaluate(self, params: Params) -> EvalResult: ...


class TorchTrainer:
    """SGD (optionally DP-SGD with ghost clipping) of a torch network on :class:`LocalData`."""

    def __init__(self, model_factory: Callable[[int], nn.Module], data: LocalData) -> None:
        self.model_factory = model_factory
        self.data = data

    @property
    def num_examples(self) -> int:
        return self.data.num_examples

    def initial_params(self, seed: int = 0) -> dict[str, NDArray[Any]]:
        return _to_numpy(self.model_factory(seed))

    def check_params(self, params: Params) -> None:
        """Raise :class:`TrainerError` unless ``params`` fit the network (before anything is spent)."""
        self._model(params)

    def _model(self, params: Params) -> nn.Module:
        model = self.model_factory(0)
        load_params(model, params)
        return model

    def fit(self, global_params: Params, config: FitConfig) -> FitResult:
        model = self._model(global_params)
        model.train()
        anchor = [p.detach().clone() for p in model.parameters()] if config.proximal_mu > 0 else None
        x, y = torch.tensor(self.data.x), torch.tensor(self.data.y)  # copies: the arrays may be read-only
        generator = torch.Generator().manual_seed(config.seed)
        loader: DataLoader[Any] = DataLoader(
            TensorDataset(x, y), batch_size=config.batch_size, shuffle=True, generator=generator
        )
        optimizer: torch.optim.Optimizer = torch.optim.SGD(
            model.parameters(), lr=config.lr, momentum=config.momentum
        )
        criterion: Any = nn.CrossEntropyLoss()
        train_model: nn.Module = model
        private: dp.PrivateTraining | None = None
        if config.dp is not None:
            settings = config.dp
            private = dp.make_private(
                model,
                optimizer,
                loader,
                noise_multiplier=settings.noise_multiplier,
                max_grad_norm=settings.max_grad_norm,
                accountant=settings.accountant,
                accountant_state=settings.accountant_state,
            )
            train_model, optimizer, criterion, loader = (
                private.model,
                private.optimizer,
                private.criterion,
                private.loader,
            )
        params = list(model.parameters())
        steps, loss_sum, seen, correct = 0, 0.0, 0, 0
        with dp.quiet_opacus():
            for _ in range(config.epochs):
                for xb, yb in loader:
                    # an empty Poisson batch still takes its (noise-only) step: skipping it would
                    # reveal that no example was sampled, and the accountant counts every step
                    optimizer.zero_grad()
                    out = train_model(xb)
                    loss = criterion(out, yb)
                    loss.backward()
                    optimizer.step()
                    steps += 1
                    if anchor is not None:
                        with torch.no_grad():
                            for p, p0 in zip(params, anchor, strict=True):
                                p.sub_(config.lr * config.proximal_mu * (p - p0))
                    if len(yb):
                        loss_sum += float(loss.detach()) * len(yb)
                        seen += len(yb)
                        correct += int((out.detach().argmax(1) == yb).sum())
        new_params = _to_numpy(model)
        for name, value in new_params.items():
            if not np.all(np.isfinite(value)):
                raise TrainerError(f"training diverged: {name} is not finite (lower the learning rate)")
        metrics = {
            "train_loss": loss_sum / seen if seen else math.nan,
            "train_accuracy": correct / seen if seen else math.nan,
            "steps": float(steps),
        }
        report = None
        if private is not None and config.dp is not None:
            state = private.state_dict()
            report = PrivacyReport(
                delta=config.dp.delta,
                noise_multiplier=config.dp.noise_multiplier,
                sample_rate=1.0 / len(loader),
                steps=steps,
                accountant=config.dp.accountant,
                accountant_state=state,
            )
            private.engine.accountant.history = []  # nothing else may read the engine
        return FitResult(new_params, self.data.num_examples, metrics, report)

    def evaluate(self, params: Params) -> EvalResult:
        model = self._model(params)
        model.eval()
        x, y = torch.tensor(self.data.x_test), torch.tensor(self.data.y_test)
        with torch.no_grad():
            out = model(x)
            loss = float(nn.functional.cross_entropy(out, y))
            accuracy = float((out.argmax(1) == y).float().mean())
        return EvalResult(loss, accuracy, self.data.num_test_examples)


def _to_numpy(model: nn.Module) -> dict[str, NDArray[Any]]:
    return {name: t.detach().cpu().numpy().copy() for name, t in model.state_dict().items()}


def load_params(model: nn.Module, params: Params) -> None:
    """Load a list (``state_dict`` order) or mapping of arrays into ``model``, checking every shape."""
    state = model.state_dict()
    if isinstance(params, Mapping):
        if set(params) != set(state):
            missing, extra = sorted(set(state) - set(params)), sorted(set(params) - set(state))
            raise TrainerError(f"parameters do not fit the network: missing {missing}, unexpected {extra}")
        items = [(name, params[name]) for name in state]
    else:
        if len(params) != len(state):
            raise TrainerError(f"the network has {len(state)} tensors, got {len(params)} arrays")
        items = list(zip(state, params, strict=True))
    new_state = {}
    for name, value in items:
        array = np.asarray(value)
        if tuple(array.shape) != tuple(state[name].shape):
            raise TrainerError(f"{name}: expected shape {tuple(state[name].shape)}, got {array.shape}")
        new_state[name] = torch.from_numpy(np.ascontiguousarray(array)).to(state[name].dtype)
    model.load_state_dict(new_state)
