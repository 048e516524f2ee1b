"""Incremental model backends of the online learner: River, scikit-learn ``partial_fit`` and PyTorch.

A :class:`Backend` predicts one sample, learns one sample, and turns its whole state into bytes and back
(the learner's checkpoints and saved versions). Each library is imported when a backend of its kind is
made, with an install hint when it is missing: River comes with ``fedge[monitor]``, PyTorch with
``fedge[train]`` (its backend lives in ``edge_agent.learning.online_torch``, the training room),
scikit-learn with ``fedge[controller]`` for now.

Labels: a float for regression; for classification one of the learner's configured ``classes``.
"""

from __future__ import annotations

import importlib
import io
import pickle
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_agent.online.base import Backend, BackendUnavailable, Label, Task

if TYPE_CHECKING:
    from edge_agent.online.config import LearnerConfig

__all__ = ["Backend", "BackendUnavailable", "Label", "RiverBackend", "SklearnBackend", "Task", "make_backend"]


def _missing(library: str, extra: str) -> BackendUnavailable:
    return BackendUnavailable(f"the {library} backend needs {library}: pip install 'fedge[{extra}]'")


# --------------------------------------------------------------------------- River
RIVER_MODELS: dict[str, tuple[Task, ...]] = {
    "linear": ("regression",),
    "logistic": ("classification",),
    "hoeffding_tree": ("regression", "classification"),
    "naive_bayes": ("classification",),
}


def clip_scaled(x: dict[str, float]) -> dict[str, float]:
    """Standardised features clipped to +-5: while the scaler has seen few samples, a near-zero variance
    would otherwise blow a feature (and the first SGD steps) up."""
    return {k: 5.0 if v > 5.0 else -5.0 if v < -5.0 else v for k, v in x.items()}


class RiverBackend(Backend):
    """A River pipeline (``StandardScaler | clip | model``; trees take raw features): ``predict_one`` /
    ``learn_one``. Models: ``linear`` (LinearRegression), ``logistic`` (binary LogisticRegression),
    ``hoeffding_tree`` (Hoeffding tree regressor or classifier), ``naive_bayes`` (Gaussian)."""

    kind = "river"

    def __init__(
        self,
        task: Task,
        n_features: int,
        classes: list[Label] | None = None,
        model: str = "linear",
        lr: float = 0.005,
    ) -> None:
        super().__init__(task, n_features, classes)
        try:
            from river import compose, linear_model, naive_bayes, optim, preprocessing, tree
        except ImportError as exc:  # pragma: no cover - the monitor extra is installed in tests
            raise _missing("river", "monitor") from exc
        if task not in RIVER_MODELS.get(model, ()):
            raise ValueError(f"river model {model!r} does not do {task} (models: {sorted(RIVER_MODELS)})")
        self.names = [f"x{i}" for i in range(n_features)]
        built: Any
        scaled = preprocessing.StandardScaler() | compose.FuncTransformer(clip_scaled)
        if model == "linear":
            built = scaled | linear_model.LinearRegression(optimizer=optim.SGD(lr), intercept_lr=lr)
        elif model == "logistic":
            built = scaled | linear_model.LogisticRegression(optimizer=optim.SGD(lr))
        elif model == "naive_bayes":
            built = naive_bayes.GaussianNB()  # type: ignore[no-untyped-call]
        elif task == "regression":
            built = tree.HoeffdingAdaptiveTreeRegressor(seed=0)
        else:
            built = tree.HoeffdingAdaptiveTreeClassifier(seed=0)
        self.model = built
        self.binary = model == "logistic"
        if self.binary and (classes is None or len(classes) != 2):
            raise ValueError("the logistic model is binary: give exactly two classes")
        self.seen = 0

    def _x(self, x: np.ndarray) -> dict[str, float]:
        return dict(zip(self.names, x.tolist(), strict=True))

    def predict(self, x: np.ndarray) -> Label | None:
        if self.seen == 0 and self.task == "classification":
            return None
        out = self.model.predict_one(self._x(x))
        if self.binary and self.classes is not None:
            return self.classes[1] if out else self.classes[0]
        return float(out) if self.task == "regression" else out

    def learn(self, x: np.ndarray, y: Label) -> None:
        if self.binary and self.classes is not None:
            y = y == self.classes[1]
        self.model.learn_one(self._x(x), y)
        self.seen += 1

    def dump(self) -> bytes:
        return pickle.dumps({"model": self.model, "seen": self.seen}, protocol=5)

    def load(self, data: bytes) -> None:
        state = pickle.loads(data)  # noqa: S301 - our own file, SHA-256 checked by the store first
        self.model, self.seen = state["model"], state["seen"]

    def explain_model(self) -> Any:
        return self.model


# --------------------------------------------------------------------- scikit-learn
SKLEARN_MODELS = ("sgd", "mlp")


class SklearnBackend(Backend):
    """scikit-learn ``partial_fit``: ``sgd`` (SGDRegressor / SGDClassifier) or ``mlp`` (MLPRegressor /
    MLPClassifier), behind a ``StandardScaler`` that is itself fitted incrementally (``partial_fit``).
    Classifiers get the configured ``classes`` at their first ``partial_fit``."""

    kind = "sklearn"

    def __init__(
        self,
        task: Task,
        n_features: int,
        classes: list[Label] | None = None,
        model: str = "sgd",
        lr: float = 0.01,
        hidden: int = 32,
        seed: int = 0,
    ) -> None:
        super().__init__(task, n_features, classes)
        try:
            import sklearn
            from sklearn.linear_model import SGDClassifier, SGDRegressor
            from sklearn.neural_network import MLPClassifier, MLPRegressor
            from sklearn.preprocessing import StandardScaler
        except ImportError as exc:  # pragma: no cover
            raise _missing("scikit-learn", "controller") from exc
        if model not in SKLEARN_MODELS:
            raise ValueError(f"scikit-learn model {model!r} is not one of {list(SKLEARN_MODELS)}")
        if task == "classification" and not classes:
            raise ValueError("a scikit-learn classifier needs its classes up front (partial_fit)")
        estimator: Any
        if model == "sgd" and task == "regression":
            estimator = SGDRegressor(learning_rate="constant", eta0=lr, random_state=seed)
        elif model == "sgd":
            estimator = SGDClassifier(loss="log_loss", learning_rate="constant", eta0=lr, random_state=seed)
        elif task == "regression":
            estimator = MLPRegressor(
                hidden_layer_sizes=(hidden,), learning_rate_init=lr / 10, random_state=seed
            )
        else:
            estimator = MLPClassifier(
                hidden_layer_sizes=(hidden,), learning_rate_init=lr / 10, random_state=seed
            )
        self.scaler, self.model = StandardScaler(), estimator
        self.fitted = False
        self._sklearn = sklearn

    def predict(self, x: np.ndarray) -> Label | None:
        if not self.fitted:
            return None
        with self._checked():
            out = self.model.predict(self.scaler.transform(x.reshape(1, -1)))[0]
        return float(out) if self.task == "regression" else out.item()

    def learn(self, x: np.ndarray, y: Label) -> None:
        row = x.reshape(1, -1)
        with self._checked():
            self.scaler.partial_fit(row)
            scaled = self.scaler.transform(row)
            if self.task == "classification" and not self.fitted:
                self.model.partial_fit(scaled, [y], classes=np.asarray(self.classes))
            else:
                self.model.partial_fit(scaled, [y])
        self.fitted = True

    def _checked(self) -> Any:
        """The learner validated the sample already (finite, right width): skip sklearn's own checks."""
        return self._sklearn.config_context(assume_finite=True, skip_parameter_validation=True)

    def dump(self) -> bytes:
        buf = io.BytesIO()
        pickle.dump({"scaler": self.scaler, "model": self.model, "fitted": self.fitted}, buf, protocol=5)
        return buf.getvalue()

    def load(self, data: bytes) -> None:
        state = pickle.loads(data)  # noqa: S301 - our own file, SHA-256 checked by the store first
        self.scaler, self.model, self.fitted = state["scaler"], state["model"], state["fitted"]

    def explain_model(self) -> Any:
        from sklearn.pipeline import Pipeline

        return Pipeline([("scale", self.scaler), ("model", self.model)]) if self.fitted else None


# ------------------------------------------------------------------------- factory
BACKENDS = ("river", "sklearn", "torch")


LIBRARIES = {
    "river": ("river", "monitor"),
    "sklearn": ("scikit-learn", "controller"),
    "torch": ("torch", "train"),
}
MODULES = {
    "river": (
        "river.compose",
        "river.linear_model",
        "river.naive_bayes",
        "river.preprocessing",
        "river.tree",
    ),
    "sklearn": (
        "sklearn.linear_model",
        "sklearn.neural_network",
        "sklearn.preprocessing",
        "sklearn.pipeline",
    ),
    "torch": ("edge_agent.learning.online_torch",),
}


def require(backend: str, model: str | None = None) -> None:
    """Import what the backend uses now, at start: a missing library (or torch module factory) fails the
    start, not every message, and the first message does not wait seconds for imports."""
    library, extra = LIBRARIES[backend]
    try:
        for module in MODULES[backend]:
            importlib.import_module(module)
    except ImportError as exc:
        raise _missing(library, extra) from exc
    if backend == "torch" and model is not None:
        from edge_agent.learning.online_torch import resolve_factory

        try:
            resolve_factory(model)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"torch model {model!r}: {exc}") from exc


def make_backend(config: LearnerConfig, n_features: int) -> Backend:
    """The backend ``config`` names, for ``n_features`` inputs (``backend_options`` go to it)."""
    options = dict(config.backend_options)
    if config.backend == "river":
        return RiverBackend(
            config.task, n_features, config.classes, model=config.model or "linear", **options
        )
    if config.backend == "sklearn":
        return SklearnBackend(
            config.task, n_features, config.classes, model=config.model or "sgd", seed=config.seed, **options
        )
    try:
        from edge_agent.learning.online_torch import TorchBackend
    except ImportError as exc:
        raise _missing("torch", "train") from exc
    return TorchBackend(
        config.task, n_features, config.classes, model=config.model or "mlp", seed=config.seed, **options
    )
