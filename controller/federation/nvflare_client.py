"""The FLARE side of fedge's ``nvflare`` engine: the network class the exported job names and the Client
API training script every FLARE client runs.

``FedgeNetwork(network, seed, initial)`` is the fedge network ``network`` (a built-in name or
``module:function``, :func:`edge_agent.learning.models.build_model`) with the same ``state_dict`` keys,
optionally loaded from an ``.npz`` of initial parameters (a start version). The job's server persistor
builds it from the exported config (``{"path": ..., "args": {...}}``), so the global model FLARE saves has
exactly the keys the controller's publish step expects.

Run as a script (FLARE's ``ScriptRunner`` copies this file into the job's ``custom/`` folder), it is one
FLARE client: it loads ``<data-dir>/<site>.npz`` (the site is the fedge device id), and for every task

* ``train``: scores the global model it received on its held-out split (``eval_loss``,
  ``eval_accuracy``: the previous round's global model), trains it with
  :class:`edge_agent.learning.trainer.TorchTrainer` (the same local SGD as on a device) and sends the new
  parameters, weighted by its number of training examples, with ``train_loss``, ``train_accuracy``;
* ``validate`` (FLARE's final global evaluation): scores the final global model, sends only metrics.

Only parameters and aggregate metrics go back to the FLARE server.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["FedgeNetwork", "main"]

EXAMPLES_KEY = "NUM_STEPS_CURRENT_ROUND"
"""FLARE's meta key its FedAvg weights an update by (here: the client's training examples)."""


class FedgeNetwork(nn.Module):
    """The fedge network ``network`` (seeded), its parameters optionally from ``initial`` (.npz)."""

    def __init__(self, network: str, seed: int = 0, initial: str | None = None) -> None:
        super().__init__()
        from edge_agent.learning.models import build_model
        from edge_agent.learning.trainer import load_params

        inner = build_model(network, seed)
        if initial:
            with np.load(initial, allow_pickle=False) as npz:
                load_params(inner, {k: npz[k] for k in npz.files})
        # share the inner module's tensors and children: the same state_dict keys, no "inner." prefix
        self._modules = inner._modules
        self._parameters = inner._parameters
        self._buffers = inner._buffers
        self._fedge_inner = [inner]  # a list: not registered as a submodule

    def forward(self, x: torch.Tensor) -> Any:
        return self._fedge_inner[0](x)


def _numpy(params: Mapping[str, Any]) -> dict[str, np.ndarray[Any, Any]]:
    out: dict[str, np.ndarray[Any, Any]] = {}
    for name, value in params.items():
        out[name] = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="fedge's FLARE client (Client API)")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--network", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--momentum", type=float, default=0.0)
    return p


def main(argv: list[str] | None = None) -> None:
    import nvflare.client as flare

    from edge_agent.learning.data import load_local_data
    from edge_agent.learning.models import resolve_factory
    from edge_agent.learning.trainer import FitConfig, TorchTrainer

    args = _parser().parse_args(argv)
    torch.set_num_threads(1)
    flare.init()
    site = flare.get_site_name()
    data = load_local_data(Path(args.data_dir) / f"{site}.npz")
    trainer = TorchTrainer(resolve_factory(args.network), data)
    while flare.is_running():
        received = flare.receive()
        if received is None:
            break
        params = _numpy(received.params or {})
        scored = trainer.evaluate(params)
        evaluation = {"eval_loss": scored.loss, "eval_accuracy": scored.accuracy}
        if flare.is_evaluate():
            flare.send(flare.FLModel(metrics={**evaluation, "num_test_examples": scored.num_examples}))
            continue
        current = int(received.current_round or 0)
        config = FitConfig(
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            momentum=args.momentum,
            seed=args.seed * 1_000_003 + current,
        )
        fit = trainer.fit(params, config)
        flare.send(
            flare.FLModel(
                params={k: torch.from_numpy(v) for k, v in fit.params.items()},
                metrics={
                    **evaluation,
                    "train_loss": fit.metrics["train_loss"],
                    "train_accuracy": fit.metrics["train_accuracy"],
                    "num_examples": fit.num_examples,
                    "num_test_examples": scored.num_examples,
                },
                meta={EXAMPLES_KEY: fit.num_examples},
            )
        )


if __name__ == "__main__":
    main()
