"""Networks a device trains, by name, or from a training package as ``module:function``.

Built in (all for 8x8 digits, input ``[N, 1, 8, 8]`` or ``[N, 64]``, 10 classes):

* ``digits-linear``: softmax regression on per-example standardised pixels;
* ``digits-mlp``: per-example standardisation, 64-128-10 with tanh (the default);
* ``digits-cnn``: two 3x3 convolutions with GroupNorm (BatchNorm is not DP-compatible).

Per-example standardisation (each digit scaled by its own mean and spread) uses no statistics of other
examples, so it costs no privacy and needs no fitted state. A custom network is ``package.module:function``
where ``function(seed: int) -> torch.nn.Module`` (or ``function()``); it must not use BatchNorm when local
DP is on. Every factory builds the same initial parameters for the same seed, on any node.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable

import torch
from torch import nn

__all__ = ["BUILTIN_MODELS", "ModelError", "PerExampleStandardize", "build_model", "resolve_factory"]

ModelFactory = Callable[[int], nn.Module]


class ModelError(ValueError):
    """An unknown network name or a factory that cannot be loaded."""


class PerExampleStandardize(nn.Module):
    """Flatten and scale each example to zero mean and unit spread over its own features."""

    def __init__(self, eps: float = 1e-3) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(x.shape[0], -1)
        mean = flat.mean(dim=1, keepdim=True)
        std = flat.std(dim=1, keepdim=True, unbiased=False)
        return (flat - mean) / (std + self.eps)


def _digits_linear() -> nn.Module:
    return nn.Sequential(PerExampleStandardize(), nn.Linear(64, 10))


def _digits_mlp() -> nn.Module:
    return nn.Sequential(PerExampleStandardize(), nn.Linear(64, 128), nn.Tanh(), nn.Linear(128, 10))


def _digits_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.GroupNorm(4, 16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )


BUILTIN_MODELS: dict[str, Callable[[], nn.Module]] = {
    "digits-linear": _digits_linear,
    "digits-mlp": _digits_mlp,
    "digits-cnn": _digits_cnn,
}


def _load(path: str) -> Callable[..., nn.Module]:
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ModelError(f"a network is a built-in name or 'module:function', not {path!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelError(f"cannot import the training package module {module_name!r}: {exc}") from exc
    func = getattr(module, attr, None)
    if not callable(func):
        raise ModelError(f"{path!r} is not a callable network factory")
    return func  # type: ignore[no-any-return]


def resolve_factory(name: str) -> ModelFactory:
    """A factory ``seed -> nn.Module`` for a built-in name or a ``module:function`` path."""
    if name in BUILTIN_MODELS:
        builtin = BUILTIN_MODELS[name]

        def make(seed: int) -> nn.Module:
            return builtin()

    elif ":" in name:
        custom = _load(name)
        takes_seed = bool(inspect.signature(custom).parameters)

        def make(seed: int) -> nn.Module:
            return custom(seed) if takes_seed else custom()

    else:
        known = ", ".join(sorted(BUILTIN_MODELS))
        raise ModelError(f"unknown network {name!r} (built in: {known}; or 'module:function')")

    def factory(seed: int) -> nn.Module:
        with torch.random.fork_rng(devices=[]):  # seeds the initial parameters only, not later draws
            torch.manual_seed(seed)
            model = make(seed)
        if not isinstance(model, nn.Module):
            raise ModelError(f"{name!r} returned {type(model).__name__}, not a torch.nn.Module")
        return model

    return factory


def build_model(name: str, seed: int = 0) -> nn.Module:
    """The network ``name`` with the initial parameters of ``seed``."""
    return resolve_factory(name)(seed)
