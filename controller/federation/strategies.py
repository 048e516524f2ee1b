"""A job's declarative strategy spec -> one of Flower's own Message-API strategies (flwr.serverapp.strategy).

A spec is a mapping (or its JSON text, or a bare name)::

    {"name": "fedprox", "proximal_mu": 0.01, "min_available_nodes": 10,
     "central_dp": {"clipping": "fixed", "noise_multiplier": 1.0, "clipping_norm": 5.0,
                    "num_sampled_clients": 10}}

``name`` is one of :data:`STRATEGIES`. Every strategy takes the sampling parameters
``fraction_train``, ``fraction_evaluate``, ``min_train_nodes``, ``min_evaluate_nodes``,
``min_available_nodes``; besides those:

==================  ===============================================================================
``fedavg``          (none)
``fedavgm``         ``server_learning_rate``, ``server_momentum`` (FedAvg with server momentum)
``fedprox``         ``proximal_mu`` (sent to the devices as ``proximal-mu``)
``fedtrimmedavg``   ``beta`` (fraction cut at each end, in [0, 0.5))
``fedmedian``       (none)
``krum``            ``num_malicious_nodes``
``multikrum``       ``num_malicious_nodes``, ``num_nodes_to_select``
==================  ===============================================================================

``central_dp`` wraps the strategy in Flower's server-side DP wrapper:
``{"clipping": "fixed", "noise_multiplier", "clipping_norm", "num_sampled_clients"}`` ->
``DifferentialPrivacyServerSideFixedClipping``; ``{"clipping": "adaptive", "noise_multiplier",
"num_sampled_clients", "initial_clipping_norm", "target_clipped_quantile", "clip_norm_lr",
"clipped_count_stddev"}`` -> ``DifferentialPrivacyServerSideAdaptiveClipping``. Dashes in keys are read as
underscores. An unknown strategy, parameter or value raises :class:`StrategySpecError` (a ``ValueError``)
that names it; the job API answers 422 with its message.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

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
    Strategy,
)

__all__ = ["STRATEGIES", "StrategySpec", "StrategySpecError", "build_strategy", "parse_spec"]


class StrategySpecError(ValueError):
    """A strategy spec names an unknown strategy, parameter or an invalid value."""


_SAMPLING: dict[str, type] = {
    "fraction_train": float,
    "fraction_evaluate": float,
    "min_train_nodes": int,
    "min_evaluate_nodes": int,
    "min_available_nodes": int,
}

#: name -> (Flower class, its own parameters and their types)
STRATEGIES: dict[str, tuple[type[FedAvg], dict[str, type]]] = {
    "fedavg": (FedAvg, {}),
    "fedavgm": (FedAvgM, {"server_learning_rate": float, "server_momentum": float}),
    "fedprox": (FedProx, {"proximal_mu": float}),
    "fedtrimmedavg": (FedTrimmedAvg, {"beta": float}),
    "fedmedian": (FedMedian, {}),
    "krum": (Krum, {"num_malicious_nodes": int}),
    "multikrum": (MultiKrum, {"num_malicious_nodes": int, "num_nodes_to_select": int}),
}

_CENTRAL_DP: dict[str, tuple[Callable[..., Strategy], dict[str, type], set[str]]] = {
    "fixed": (
        DifferentialPrivacyServerSideFixedClipping,
        {"noise_multiplier": float, "clipping_norm": float, "num_sampled_clients": int},
        {"noise_multiplier", "clipping_norm", "num_sampled_clients"},
    ),
    "adaptive": (
        DifferentialPrivacyServerSideAdaptiveClipping,
        {
            "noise_multiplier": float,
            "num_sampled_clients": int,
            "initial_clipping_norm": float,
            "target_clipped_quantile": float,
            "clip_norm_lr": float,
            "clipped_count_stddev": float,
        },
        {"noise_multiplier", "num_sampled_clients"},
    ),
}


@dataclass(frozen=True)
class StrategySpec:
    """A checked spec: the strategy's name, its keyword arguments and the central-DP wrapper's."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    central_dp: dict[str, Any] | None = None


def _normalise(raw: Mapping[str, Any], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if not isinstance(key, str):
            raise StrategySpecError(f"{where}: parameter names must be strings, got {key!r}")
        out[key.replace("-", "_")] = value
    return out


def _coerce(name: str, value: Any, kind: type, where: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise StrategySpecError(f"{where}: {name} must be a number, got {value!r}")
    if kind is int:
        if float(value) != int(value):
            raise StrategySpecError(f"{where}: {name} must be a whole number, got {value!r}")
        return int(value)
    if not math.isfinite(float(value)):
        raise StrategySpecError(f"{where}: {name} must be finite, got {value!r}")
    return float(value)


def _check(params: Mapping[str, Any], allowed: Mapping[str, type], where: str) -> dict[str, Any]:
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise StrategySpecError(
            f"{where}: unknown parameter{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
            f"(allowed: {', '.join(sorted(allowed)) or 'none'})"
        )
    return {key: _coerce(key, value, allowed[key], where) for key, value in params.items()}


def parse_spec(spec: str | Mapping[str, Any]) -> StrategySpec:
    """Check a spec (mapping, JSON object text or bare strategy name) without building anything."""
    if isinstance(spec, str):
        text = spec.strip()
        if text.startswith("{"):
            try:
                loaded = json.loads(text)
            except json.JSONDecodeError as exc:
                raise StrategySpecError(f"strategy spec is not valid JSON: {exc}") from exc
            spec = loaded
        else:
            spec = {"name": text}
    if not isinstance(spec, Mapping):
        raise StrategySpecError(f"a strategy spec is an object, got {type(spec).__name__}")
    raw = _normalise(spec, "strategy")
    name = raw.pop("name", None)
    if not isinstance(name, str) or name.lower() not in STRATEGIES:
        raise StrategySpecError(f"unknown strategy {name!r} (known: {', '.join(STRATEGIES)})")
    name = name.lower()
    central_raw = raw.pop("central_dp", None)
    _, own = STRATEGIES[name]
    params = _check(raw, {**_SAMPLING, **own}, name)
    central = None
    if central_raw is not None:
        if not isinstance(central_raw, Mapping):
            raise StrategySpecError("central_dp must be an object")
        central = _normalise(central_raw, "central_dp")
        clipping = central.pop("clipping", "fixed")
        if clipping not in _CENTRAL_DP:
            raise StrategySpecError(f"central_dp: unknown clipping {clipping!r} (known: fixed, adaptive)")
        _, allowed, required = _CENTRAL_DP[clipping]
        central = _check(central, allowed, f"central_dp ({clipping})")
        missing = sorted(required - set(central))
        if missing:
            raise StrategySpecError(f"central_dp ({clipping}): missing {', '.join(missing)}")
        central["clipping"] = clipping
    return StrategySpec(name=name, params=params, central_dp=central)


def build_strategy(spec: str | Mapping[str, Any] | StrategySpec, **defaults: Any) -> Strategy:
    """Flower's strategy for ``spec``; ``defaults`` (e.g. ``min_available_nodes``) apply where the spec
    is silent. Flower's own argument checks (e.g. FedTrimmedAvg's beta) surface as StrategySpecError."""
    checked = spec if isinstance(spec, StrategySpec) else parse_spec(spec)
    cls, own = STRATEGIES[checked.name]
    defaults = _check(_normalise(defaults, "defaults"), {**_SAMPLING, **own}, f"{checked.name} defaults")
    try:
        strategy: Strategy = cls(**{**defaults, **checked.params})
        if checked.central_dp is not None:
            central = dict(checked.central_dp)
            wrapper, _, _ = _CENTRAL_DP[central.pop("clipping")]
            strategy = wrapper(strategy, **central)
    except (ValueError, TypeError) as exc:
        raise StrategySpecError(f"{checked.name}: {exc}") from exc
    return strategy
