"""The backend interface of the online learner (the implementations: :mod:`edge_agent.online.backends`,
and ``edge_agent.learning.online_torch`` for PyTorch)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Literal

import numpy as np

Task = Literal["regression", "classification"]
Label = float | int | str


class BackendUnavailable(RuntimeError):
    """The library a backend needs is not installed (the message names the extra)."""


class Backend(ABC):
    """One incremental model: ``predict`` then ``learn``, one sample at a time."""

    kind: str = "backend"

    def __init__(self, task: Task, n_features: int, classes: list[Label] | None = None) -> None:
        self.task, self.n_features, self.classes = task, n_features, classes

    @abstractmethod
    def predict(self, x: np.ndarray) -> Label | None:
        """The prediction for one feature vector (shape ``(n_features,)``); None before it can predict."""

    @abstractmethod
    def learn(self, x: np.ndarray, y: Label) -> None:
        """Update the model with one labelled sample."""

    @abstractmethod
    def dump(self) -> bytes:
        """The whole state (model, scalers, buffers) as bytes; :meth:`load` restores it."""

    @abstractmethod
    def load(self, data: bytes) -> None:
        """Replace the state with one :meth:`dump` made."""

    def explain_model(self) -> Any:
        """The object an explainer gets: it maps raw features (not scaled ones) to the prediction."""
        return None
