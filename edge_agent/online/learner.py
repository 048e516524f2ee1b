"""The online learner: transformer -> backend, prequential (predict, then learn), save on improvement.

One message (MQTT or the local API) goes through :meth:`OnlineLearner.update`:

1. parse (size limit, UTF-8 JSON object) and ``transformer.prepare`` (fields, feature count, NaN/inf,
   timestamp order, gap repair); features and labels beyond ``max_abs`` and labels that are not a finite
   number (regression) or one of the ``classes`` are refused too. A refusal raises
   :class:`~edge_agent.online.errors.RejectedInput` before anything changed: counted per reason, logged
   at most once per reason every 10 s, the model untouched.
2. predict the query; then, for every sample the message labels, predict it (prequential), record the
   loss (squared error; 0/1 error for classification), tell the observers
   (``on_prediction(y_true, y_pred, features)``), and learn from it, except every ``holdout_every``-th
   sample, which goes to the rolling validation window instead. A prediction that is not finite means
   the model diverged: it is put back to its last snapshot (taken at each checkpoint and save) and the
   message counts as ``diverged``.
3. commit the transformer's state change.

**Save on improvement**: every ``evaluate_every`` learned samples (once the validation window holds
``min_validation``), the current model and the last saved version are scored on the *same* window; a new
version is saved only when the current loss is below ``(1 - min_improvement)`` x the saved version's
loss (the first evaluation always saves). Saved versions and checkpoints are written atomically with
their SHA-256 (:mod:`edge_agent.online.store`); on start the learner resumes from its checkpoint, or
from the last good version when the checkpoint is missing or damaged.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from edge_agent.online.backends import Backend, Label, make_backend, require
from edge_agent.online.config import LearnerConfig
from edge_agent.online.errors import (
    ExplainerUnavailable,
    LearnerNotReady,
    RateLimitedLog,
    Reason,
    RejectedInput,
)
from edge_agent.online.store import LearnerStore, SavedVersion
from edge_agent.online.transformers import Prepared, Transformer, make_transformer

log = logging.getLogger("fedge.agent.online")

Observer = Callable[[Label, Label, np.ndarray], None]
"""``on_prediction(y_true, y_pred, features)``: called for every prequential prediction (keep it quick:
it runs in the ingest thread; hand work to a queue)."""
BackendFactory = Callable[[LearnerConfig, int], Backend]
EWM_ALPHA = 0.02  # the running loss: an exponentially weighted mean over roughly the last 100 samples


def _config_key(config: LearnerConfig, n_features: int | None) -> dict[str, Any]:
    """What a checkpoint must match to be resumed (a changed model or transformer starts afresh)."""
    return {
        "backend": config.backend,
        "model": config.model,
        "task": config.task,
        "classes": config.classes,
        "transformer": config.transformer,
        "transformer_options": config.transformer_options,
        "n_features": n_features,
    }


class OnlineLearner:
    """One named learner (thread-safe: the API threads and the ingest worker share it)."""

    def __init__(
        self,
        config: LearnerConfig,
        store: LearnerStore | None = None,
        *,
        backend_factory: BackendFactory = make_backend,
        transformer: Transformer | None = None,
    ) -> None:
        self.config, self.store, self.backend_factory = config, store, backend_factory
        if backend_factory is make_backend:
            require(config.backend, config.model)
        self.transformer = transformer or make_transformer(config.transformer, config.transformer_options)
        self.backend: Backend | None = None
        self.saved: Backend | None = None  # the last saved version, for a fair comparison
        self.lock = threading.RLock()
        self.observers: list[Observer] = []
        self.on_saved: list[Callable[[SavedVersion], None]] = []
        self.drift: Callable[[], dict[str, Any] | None] | None = None
        """Set by a monitor: the drift status shown in :meth:`status` (None: no monitor)."""
        self.validation: deque[tuple[np.ndarray, Label]] = deque(maxlen=config.save.validation_size)
        self.saved_losses: deque[float] = deque(maxlen=config.save.validation_size)
        self.rejected: Counter[str] = Counter()
        self.repaired: Counter[str] = Counter()
        self.messages = self.samples = self.learned = self.held_out = 0
        self.loss_sum, self.scored = 0.0, 0
        self.loss: float | None = None
        self.last_loss: float | None = None
        self.last_message_at: float | None = None
        self.version: dict[str, Any] | None = None
        self.evaluation: dict[str, Any] | None = None
        self._since_eval = self._since_checkpoint = 0
        self._checkpoint_at = time.monotonic()
        self._snapshot: bytes | None = None
        self._warn = RateLimitedLog(log)
        self.restored_from: str = "new"
        self._restore()

    # ------------------------------------------------------------- parsing
    def _parse(self, message: bytes | str | dict[str, Any]) -> dict[str, Any]:
        if isinstance(message, dict):
            return message
        raw = message.encode() if isinstance(message, str) else message
        if len(raw) > self.config.max_message_bytes:
            raise RejectedInput(
                Reason.TOO_LARGE, f"message of {len(raw)} bytes, over {self.config.max_message_bytes}"
            )
        try:
            payload = json.loads(raw)
        except (UnicodeDecodeError, ValueError) as exc:
            raise RejectedInput(Reason.MALFORMED_JSON, f"not JSON: {exc}") from exc
        if not isinstance(payload, dict):
            raise RejectedInput(Reason.MALFORMED_JSON, "a message must be a JSON object")
        return payload

    def _check(self, prepared: Prepared) -> None:
        """Refuse what no transformer may pass to the model: wrong width, non-finite, huge, bad label."""
        limit = self.config.max_abs
        width = self.backend.n_features if self.backend is not None else None
        vectors = [x for x, _ in prepared.labelled]
        if prepared.query is not None:
            vectors.append(prepared.query)
        for x in vectors:
            if width is not None and x.shape != (width,):
                raise RejectedInput(Reason.WRONG_FEATURE_COUNT, f"{x.size} features, expected {width}")
            if not (np.abs(x) <= limit).all():
                if not np.isfinite(x).all():
                    raise RejectedInput(Reason.NON_FINITE, "the features hold NaN or infinity")
                raise RejectedInput(Reason.OUT_OF_RANGE, f"a feature is beyond +-{limit:g}")
        for _, y in prepared.labelled:
            self._check_label(y)

    def _check_label(self, y: Any) -> None:
        if self.config.task == "classification":
            assert self.config.classes is not None
            if isinstance(y, bool) or y not in self.config.classes:
                raise RejectedInput(Reason.UNKNOWN_LABEL, f"label {y!r} is not one of {self.config.classes}")
            return
        if isinstance(y, bool) or not isinstance(y, int | float):
            raise RejectedInput(Reason.INVALID_MESSAGE, f"the label must be a number, not {type(y).__name__}")
        if not math.isfinite(y):
            raise RejectedInput(Reason.NON_FINITE, f"the label is {y}")
        if abs(y) > self.config.max_abs:
            raise RejectedInput(Reason.OUT_OF_RANGE, f"the label is beyond +-{self.config.max_abs:g}")

    def reject(self, exc: RejectedInput, source: str = "api") -> None:
        """Count and log (rate-limited) one refused message."""
        with self.lock:
            self.rejected[exc.reason] += 1
        self._warn.warning(
            exc.reason,
            "online learner %s: dropped a %s message (%s): %s",
            self.config.name,
            source,
            exc.reason,
            exc.detail,
        )

    # ---------------------------------------------------------------- model
    def _ensure_backend(self, n_features: int) -> Backend:
        if self.backend is None:
            self.backend = self.backend_factory(self.config, n_features)
            self._snapshot = self.backend.dump()
        return self.backend

    def _loss(self, prediction: Label, y: Label) -> float:
        if self.config.task == "classification":
            return 0.0 if prediction == y else 1.0
        return (float(prediction) - float(y)) ** 2

    def _predict(self, backend: Backend, x: np.ndarray) -> Label | None:
        """A prediction; a non-finite one means the model diverged: put it back, refuse the message."""
        prediction = backend.predict(x)
        if (
            self.config.task == "regression"
            and prediction is not None
            and not math.isfinite(float(prediction))
        ):
            if self._snapshot is not None:
                backend.load(self._snapshot)
            raise RejectedInput(
                Reason.DIVERGED, "the model predicted a non-finite value; restored its snapshot"
            )
        return prediction

    # ------------------------------------------------------------- messages
    def update(self, message: bytes | str | dict[str, Any], source: str = "api") -> dict[str, Any]:
        """One message, prequentially: predict, then learn. Raises RejectedInput (already counted)."""
        try:
            payload = self._parse(message)
            with self.lock:
                return self._update(payload)
        except RejectedInput as exc:
            self.reject(exc, source)
            raise

    def _update(self, payload: dict[str, Any]) -> dict[str, Any]:
        prepared = self.transformer.prepare(payload)
        self._check(prepared)
        width = prepared.query.size if prepared.query is not None else None
        if width is None and prepared.labelled:
            width = prepared.labelled[0][0].size
        backend = self._ensure_backend(width) if width is not None else self.backend
        prediction = (
            self._predict(backend, prepared.query) if backend and prepared.query is not None else None
        )
        losses: list[float] = []
        learned = held = 0
        for x, y in prepared.labelled:
            assert backend is not None
            guess = prediction if x is prepared.query else self._predict(backend, x)
            if guess is not None:
                loss = self._loss(guess, y)
                losses.append(loss)
                self._record_loss(loss)
                for observer in self.observers:
                    try:
                        observer(y, guess, x)
                    except Exception:
                        self._warn.warning(
                            "observer", "online learner %s: an observer failed", self.config.name
                        )
            self.samples += 1
            if self.samples % self.config.save.holdout_every == 0:
                self._hold_out(x, y)
                self.held_out += 1
                held += 1
            else:
                backend.learn(x, y)
                self.learned += 1
                self._since_eval += 1
                learned += 1
        self.transformer.commit(prepared)
        for repair in prepared.repairs:
            self.repaired[repair] += 1
        self.messages += 1
        self._since_checkpoint += 1
        self.last_message_at = time.time()
        saved = self._maybe_save()
        if self._since_checkpoint >= self.config.checkpoint_every:
            self.checkpoint()
        return {
            "name": self.config.name,
            "prediction": self.transformer.present(prediction, prepared),
            "loss": losses[-1] if losses else None,
            "learned": learned,
            "held_out": held,
            "repaired": [str(r) for r in prepared.repairs],
            "saved_version": saved.version if saved else None,
        }

    def _record_loss(self, loss: float) -> None:
        self.last_loss = loss
        self.loss_sum += loss
        self.scored += 1
        self.loss = loss if self.loss is None else self.loss + EWM_ALPHA * (loss - self.loss)

    def predict(self, message: bytes | str | dict[str, Any]) -> dict[str, Any]:
        """A prediction only: nothing learned, no state changed (LearnerNotReady before a model exists)."""
        try:
            payload = self._parse(message)
            with self.lock:
                prepared = self.transformer.peek(payload)
                self._check(prepared)
                if self.backend is None or prepared.query is None:
                    raise LearnerNotReady(
                        f"learner {self.config.name} has no model or no full input window yet"
                    )
                prediction = self._predict(self.backend, prepared.query)
                return {
                    "name": self.config.name,
                    "prediction": self.transformer.present(prediction, prepared),
                }
        except RejectedInput as exc:
            self.reject(exc, "api")
            raise

    def explain(self, message: bytes | str | dict[str, Any]) -> dict[str, Any]:
        """Per-feature attributions for one query, by ``edge_agent.learning.explain.explain(model, x)``."""
        try:
            payload = self._parse(message)
            with self.lock:
                prepared = self.transformer.peek(payload)
                self._check(prepared)
                if self.backend is None or prepared.query is None:
                    raise LearnerNotReady(
                        f"learner {self.config.name} has no model or no full input window yet"
                    )
                model, x = self.backend.explain_model(), prepared.query
                if model is None:
                    raise LearnerNotReady(f"learner {self.config.name} has not learned anything yet")
                prediction = self._predict(self.backend, x)
        except RejectedInput as exc:
            self.reject(exc, "api")
            raise
        explain = _explainer(self.config.backend)
        try:
            attributions = explain(model, x)
        except (NotImplementedError, TypeError) as exc:
            raise ExplainerUnavailable(
                f"the explainer cannot explain a {self.config.backend} model: {exc}"
            ) from exc
        values = attributions.tolist() if hasattr(attributions, "tolist") else attributions
        return {
            "name": self.config.name,
            "backend": self.config.backend,
            "features": x.tolist(),
            "prediction": prediction,
            "attributions": values,
        }

    # -------------------------------------------------------- save on improvement
    def _sample_loss(self, backend: Backend | None, x: np.ndarray, y: Label) -> float:
        guess = backend.predict(x) if backend is not None else None
        if guess is None:
            return math.inf
        loss = self._loss(guess, y)
        return loss if math.isfinite(loss) else math.inf

    def _hold_out(self, x: np.ndarray, y: Label) -> None:
        """Into the validation window, with the saved version's loss on it (scored once, on entry)."""
        self.validation.append((x, y))
        self.saved_losses.append(self._sample_loss(self.saved, x, y))

    def _rescore_saved(self) -> None:
        self.saved_losses.clear()
        self.saved_losses.extend(self._sample_loss(self.saved, x, y) for x, y in self.validation)

    @staticmethod
    def _mean(losses: Iterable[float]) -> float:
        values = list(losses)
        mean = float(np.mean(values)) if values else math.inf
        return mean if math.isfinite(mean) else math.inf

    def _maybe_save(self) -> SavedVersion | None:
        policy = self.config.save
        if self.backend is None or self._since_eval < policy.evaluate_every:
            return None
        if len(self.validation) < policy.min_validation:
            return None
        self._since_eval = 0
        losses = [self._sample_loss(self.backend, x, y) for x, y in self.validation]
        current = self._mean(losses)
        previous = self._mean(self.saved_losses) if self.saved is not None else None
        better = math.isfinite(current) and (
            previous is None or current < previous * (1 - policy.min_improvement)
        )
        self.evaluation = {
            "validation_loss": current,
            "saved_version_loss": previous,
            "saved": better,
            "at_sample": self.samples,
            "window": len(self.validation),
        }
        if not better:
            return None
        saved = self.save(current, rescore=False)
        self.saved_losses.clear()
        self.saved_losses.extend(losses)  # the saved version is the current model: its losses are these
        return saved

    def save(self, validation_loss: float | None = None, rescore: bool = True) -> SavedVersion | None:
        """Save the current model as a new local version (the evaluation calls this on improvement)."""
        with self.lock:
            if self.backend is None:
                return None
            model = self.backend.dump()
            meta = {
                "name": self.config.name,
                **_config_key(self.config, self.backend.n_features),
                "validation_loss": validation_loss,
                "samples_seen": self.samples,
            }
            saved: SavedVersion | None = None
            if self.store is not None:
                saved = self.store.save_version(model, meta)
                self.version = saved.meta
            else:
                number = int(self.version["version"]) + 1 if self.version else 1
                self.version = {**meta, "version": number, "saved_at": time.time()}
            self.saved = self.backend_factory(self.config, self.backend.n_features)
            self.saved.load(model)
            self._snapshot = model
            if rescore:
                self._rescore_saved()
        if saved is not None:
            for hook in self.on_saved:
                try:
                    hook(saved)
                except Exception:
                    log.exception("online learner %s: a saved-version hook failed", self.config.name)
        return saved

    # ----------------------------------------------------------- persistence
    def checkpoint(self) -> None:
        """Write the running state (model, buffers, counters, transformer) to disk, atomically."""
        with self.lock:
            self._since_checkpoint = 0
            self._checkpoint_at = time.monotonic()
            if self.backend is not None:
                self._snapshot = self.backend.dump()
            if self.store is None:
                return
            meta = {
                "config": _config_key(self.config, self.backend.n_features if self.backend else None),
                "transformer": self.transformer.state(),
                "validation": [[x.tolist(), y] for x, y in self.validation],
                "counters": {
                    "messages": self.messages,
                    "samples": self.samples,
                    "learned": self.learned,
                    "held_out": self.held_out,
                    "loss_sum": self.loss_sum,
                    "scored": self.scored,
                    "loss": self.loss,
                    "last_loss": self.last_loss,
                    "since_eval": self._since_eval,
                    "rejected": dict(self.rejected),
                    "repaired": dict(self.repaired),
                },
                "evaluation": self.evaluation,
            }
            self.store.write_checkpoint(self._snapshot or b"", meta)

    def checkpoint_due(self) -> bool:
        return self._since_checkpoint > 0 and (
            time.monotonic() - self._checkpoint_at >= self.config.checkpoint_interval
        )

    def _restore(self) -> None:
        if self.store is None:
            return
        self.version = self.store.last_good_meta()
        good = self.store.last_good()
        if good is not None:
            model, meta = good
            width = meta.get("n_features")
            key = _config_key(self.config, width)
            if width is not None and key == {k: meta.get(k) for k in key}:
                self.saved = self.backend_factory(self.config, int(width))
                self.saved.load(model)
            else:
                log.warning(
                    "online learner %s: its saved versions are of another configuration", self.config.name
                )
                good = None
        found = self.store.read_checkpoint()
        if found is not None:
            model, meta = found
            key = meta.get("config", {})
            width = key.get("n_features")
            if key == _config_key(self.config, width):
                self._resume(model, meta, width)
                self.restored_from = "checkpoint"
                return
            log.warning(
                "online learner %s: its checkpoint is of another configuration; not resumed", self.config.name
            )
        if good is not None and self.saved is not None:
            self.backend = self.backend_factory(self.config, self.saved.n_features)
            self.backend.load(good[0])
            self._snapshot = good[0]
            self.restored_from = f"version {good[1]['version']}"

    def _resume(self, model: bytes, meta: dict[str, Any], width: int | None) -> None:
        if width is not None and model:
            self.backend = self.backend_factory(self.config, int(width))
            self.backend.load(model)
            self._snapshot = model
        self.transformer.restore(meta.get("transformer", {}))
        for x, y in meta.get("validation", []):
            self.validation.append((np.asarray(x, dtype=np.float64), y))
        self._rescore_saved()
        counters = meta.get("counters", {})
        self.messages = int(counters.get("messages", 0))
        self.samples = int(counters.get("samples", 0))
        self.learned = int(counters.get("learned", 0))
        self.held_out = int(counters.get("held_out", 0))
        self.loss_sum = float(counters.get("loss_sum", 0.0))
        self.scored = int(counters.get("scored", 0))
        self.loss, self.last_loss = counters.get("loss"), counters.get("last_loss")
        self._since_eval = int(counters.get("since_eval", 0))
        self.rejected.update(counters.get("rejected", {}))
        self.repaired.update(counters.get("repaired", {}))
        self.evaluation = meta.get("evaluation")

    # --------------------------------------------------------------- status
    def status(self) -> dict[str, Any]:
        with self.lock:
            if self.backend is None:
                state = "new"
            elif self.learned == 0:
                state = "warming_up"
            else:
                state = "learning"
            drift = None
            if self.drift is not None:
                try:
                    drift = self.drift()
                except Exception:
                    log.exception("online learner %s: the drift status failed", self.config.name)
            return {
                "name": self.config.name,
                "backend": self.config.backend,
                "model": self.config.model,
                "task": self.config.task,
                "transformer": self.config.transformer,
                "state": state,
                "restored_from": self.restored_from,
                "n_features": self.backend.n_features if self.backend else self.transformer.n_features,
                "messages": self.messages,
                "samples_seen": self.samples,
                "samples_learned": self.learned,
                "held_out": self.held_out,
                "validation_window": len(self.validation),
                "last_loss": self.last_loss,
                "loss": self.loss,
                "mean_loss": self.loss_sum / self.scored if self.scored else None,
                "last_evaluation": self.evaluation,
                "last_saved_version": self.version.get("version") if self.version else None,
                "last_saved_at": self.version.get("saved_at") if self.version else None,
                "last_saved_sha256": self.version.get("sha256") if self.version else None,
                "last_message_at": self.last_message_at,
                "rejected": dict(self.rejected),
                "repaired": dict(self.repaired),
                "drift": drift,
            }

    def fingerprint(self) -> str:
        """SHA-256 of the model's whole state (tests: unchanged after a refused message)."""
        import hashlib

        with self.lock:
            return hashlib.sha256(self.backend.dump() if self.backend else b"").hexdigest()


def _explainer(backend: str) -> Callable[[Any, np.ndarray], Any]:
    try:  # G's explainer room: optional, and the backends it covers are its own
        module = importlib.import_module("edge_agent.learning.explain")
    except ImportError as exc:
        raise ExplainerUnavailable(
            f"no explainer for the {backend} backend: edge_agent.learning.explain cannot be imported ({exc})"
        ) from exc
    function = getattr(module, "explain", None)
    if not callable(function):
        raise ExplainerUnavailable(
            f"no explainer for the {backend} backend: edge_agent.learning.explain has no explain()"
        )
    return function  # type: ignore[no-any-return]
