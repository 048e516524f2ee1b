"""The PyTorch backend of the online learner (``edge_agent.online``): any small ``nn.Module``, updated with
mini-batches drawn from a bounded replay buffer (the newest sample is always in the batch).

The module comes from a factory ``(n_features, n_outputs) -> nn.Module`` taking ``(batch, n_features)``
floats: the built-in ``mlp``, a ``package.module:function`` name in the learner config, or a callable
passed in code (e.g. an adapter around the UC10 forecaster of ``edge_agent.learning.forecast``). Inputs
(and regression targets) are standardised with running means and variances, so the module sees values
near 0 whatever the sensor's unit; :meth:`TorchBackend.explain_model` undoes both, so an explainer sees
raw features in and raw predictions out.
"""

from __future__ import annotations

import importlib
import io
import random
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from edge_agent.online.base import Backend, Label, Task

ModuleFactory = Callable[[int, int], nn.Module]


def mlp(n_features: int, n_outputs: int, hidden: int = 32) -> nn.Module:
    """Two hidden layers of ``hidden`` units (ReLU)."""
    return nn.Sequential(
        nn.Linear(n_features, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, n_outputs),
    )


def resolve_factory(name: str) -> ModuleFactory:
    """``mlp`` or ``package.module:function``."""
    if name == "mlp":
        return mlp
    module, sep, attr = name.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"torch model {name!r} is neither 'mlp' nor 'package.module:function'")
    factory = getattr(importlib.import_module(module), attr, None)
    if not callable(factory):
        raise ValueError(f"{name!r} is not a callable")
    return factory  # type: ignore[no-any-return]


class _Running:
    """Running mean and variance (Welford), per column."""

    def __init__(self, width: int) -> None:
        self.n = 0
        self.mean = np.zeros(width)
        self.m2 = np.zeros(width)

    def update(self, value: np.ndarray) -> None:
        self.n += 1
        delta = value - self.mean
        self.mean = self.mean + delta / self.n
        self.m2 = self.m2 + delta * (value - self.mean)

    @property
    def std(self) -> np.ndarray:
        if self.n < 2:
            return np.ones_like(self.mean)
        std = np.sqrt(self.m2 / (self.n - 1))
        return np.where(std > 1e-12, std, 1.0)


class _RawUnits(nn.Module):
    """scale -> module -> unscale: the module in the sensor's units (for explainers)."""

    x_mean: torch.Tensor
    x_std: torch.Tensor

    def __init__(
        self, module: nn.Module, x_mean: np.ndarray, x_std: np.ndarray, y: tuple[float, float]
    ) -> None:
        super().__init__()
        self.module = module
        self.register_buffer("x_mean", torch.tensor(x_mean, dtype=torch.float32))
        self.register_buffer("x_std", torch.tensor(x_std, dtype=torch.float32))
        self.y_mean, self.y_std = y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.module((x - self.x_mean) / self.x_std)
        return out * self.y_std + self.y_mean


class TorchBackend(Backend):
    """Mini-batch SGD (Adam) on a replay buffer of the last ``replay`` samples: every ``update_every``
    learned samples, ``steps`` batches of up to ``batch_size`` samples. ``threads`` (default 1) sets
    torch's intra-op threads for the whole process (None: leave it): on a small model more threads only
    add waiting (20 ms vs 1 ms a step measured on 2 busy cores)."""

    kind = "torch"

    def __init__(
        self,
        task: Task,
        n_features: int,
        classes: list[Label] | None = None,
        model: str | ModuleFactory = "mlp",
        seed: int = 0,
        lr: float = 1e-3,
        batch_size: int = 32,
        replay: int = 2048,
        update_every: int = 1,
        steps: int = 1,
        threads: int | None = 1,
    ) -> None:
        super().__init__(task, n_features, classes)
        if task == "classification" and not classes:
            raise ValueError("a torch classifier needs its classes")
        if min(batch_size, replay, update_every, steps) < 1:
            raise ValueError("batch_size, replay, update_every and steps must be at least 1")
        if threads is not None:
            torch.set_num_threads(threads)  # process-wide; a tiny model only waits on more threads
        torch.manual_seed(seed)
        factory = resolve_factory(model) if isinstance(model, str) else model
        self.outputs = len(classes) if task == "classification" and classes else 1
        self.module = factory(n_features, self.outputs)
        self.optimizer = torch.optim.Adam(self.module.parameters(), lr=lr)
        self.batch_size, self.update_every, self.steps = batch_size, update_every, steps
        self.replay_x: deque[np.ndarray] = deque(maxlen=replay)
        self.replay_y: deque[float] = deque(maxlen=replay)
        self.x_stats, self.y_stats = _Running(n_features), _Running(1)
        self.seen = 0
        self.rng = random.Random(seed)  # noqa: S311 - batch sampling, not cryptography

    def _index(self, y: Label) -> float:
        return float(self.classes.index(y)) if self.task == "classification" and self.classes else float(y)

    def _scale_x(self, x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor((x - self.x_stats.mean) / self.x_stats.std, dtype=torch.float32)

    def predict(self, x: np.ndarray) -> Label | None:
        if self.seen == 0:
            return None
        self.module.eval()
        with torch.no_grad():
            out = self.module(self._scale_x(x.reshape(1, -1)))
        if self.task == "classification" and self.classes:
            return self.classes[int(out.argmax(dim=1)[0])]
        return float(out.reshape(-1)[0]) * float(self.y_stats.std[0]) + float(self.y_stats.mean[0])

    def learn(self, x: np.ndarray, y: Label) -> None:
        target = self._index(y)
        self.x_stats.update(x)
        if self.task == "regression":
            self.y_stats.update(np.array([target]))
        self.replay_x.append(np.asarray(x, dtype=np.float64))
        self.replay_y.append(target)
        self.seen += 1
        if self.seen % self.update_every:
            return
        self.module.train()
        size = len(self.replay_x)
        for _ in range(self.steps):
            picked = [*self.rng.sample(range(size - 1), min(self.batch_size, size) - 1), size - 1]
            xb = self._scale_x(np.stack([self.replay_x[i] for i in picked]))
            yb = torch.tensor([self.replay_y[i] for i in picked])
            out = self.module(xb)
            if self.task == "classification":
                loss = nn.functional.cross_entropy(out, yb.long())
            else:
                scaled = (yb.float() - float(self.y_stats.mean[0])) / float(self.y_stats.std[0])
                loss = nn.functional.mse_loss(out.reshape(-1), scaled)
            self.optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            self.optimizer.step()

    def dump(self) -> bytes:
        state = {
            "module": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "replay_x": torch.tensor(np.stack(self.replay_x)) if self.replay_x else torch.zeros(0),
            "replay_y": torch.tensor(list(self.replay_y), dtype=torch.float64),
            "x_stats": [self.x_stats.n, torch.tensor(self.x_stats.mean), torch.tensor(self.x_stats.m2)],
            "y_stats": [self.y_stats.n, torch.tensor(self.y_stats.mean), torch.tensor(self.y_stats.m2)],
            "seen": self.seen,
            "rng": list(self.rng.getstate()[1]),
        }
        buf = io.BytesIO()
        torch.save(state, buf)
        return buf.getvalue()

    def load(self, data: bytes) -> None:
        state: dict[str, Any] = torch.load(io.BytesIO(data), weights_only=True)
        self.module.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.replay_x.clear()
        self.replay_y.clear()
        self.replay_x.extend(row.numpy() for row in state["replay_x"])
        self.replay_y.extend(float(v) for v in state["replay_y"])
        for stats, (n, mean, m2) in ((self.x_stats, state["x_stats"]), (self.y_stats, state["y_stats"])):
            stats.n, stats.mean, stats.m2 = int(n), mean.numpy(), m2.numpy()
        self.seen = int(state["seen"])
        self.rng.setstate((3, tuple(int(v) for v in state["rng"]), None))

    def explain_model(self) -> Any:
        y = (
            (float(self.y_stats.mean[0]), float(self.y_stats.std[0]))
            if self.task == "regression"
            else (0.0, 1.0)
        )
        wrapped = _RawUnits(self.module, self.x_stats.mean, self.x_stats.std, y)
        return wrapped.eval()
