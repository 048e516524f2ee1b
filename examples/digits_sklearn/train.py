"""Train a scikit-learn logistic regression on 8x8 digits, following fedge's training contract.

Reads ``FEDGE_DATASET_PATH`` (``.npz`` with ``x`` float32 ``[N, 1, 8, 8]`` in [0, 1] and ``y`` int64),
``FEDGE_HYPERPARAMETERS`` (JSON: ``C``, ``max_iter``, ``seed``, ``holdout``), flattens each image to 64
features, writes ``FEDGE_OUTPUT_DIR/model.skops`` (skops format: loading it runs no code, unlike a pickle)
and ``model.json``, and appends metrics lines to ``FEDGE_METRICS_FILE``.

    python -m examples.digits_sklearn.train     # or: python examples/digits_sklearn/train.py

Exit status 0 on success, 2 for bad input, 1 for anything else. Self-contained on purpose.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

DEFAULTS: dict[str, Any] = {"C": 1.0, "max_iter": 500, "seed": 0, "holdout": 0.2}
N_FEATURES = 64
N_CLASSES = 10


class BadInput(Exception):
    """The job's inputs are unusable; the message says which and why."""


def _env_path(name: str) -> Path:
    value = os.environ.get(name)
    if not value:
        raise BadInput(f"environment variable {name} is not set (see the training contract)")
    return Path(value)


def read_hyperparameters() -> dict[str, Any]:
    """The defaults overridden by ``FEDGE_HYPERPARAMETERS``, checked."""
    raw = os.environ.get("FEDGE_HYPERPARAMETERS", "") or "{}"
    try:
        given = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise BadInput(f"FEDGE_HYPERPARAMETERS is not valid JSON: {exc}") from None
    if not isinstance(given, dict):
        raise BadInput("FEDGE_HYPERPARAMETERS must be a JSON object")
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        print(f"warning: ignoring unknown hyper-parameters {unknown}", file=sys.stderr)
    hp = {**DEFAULTS, **{k: v for k, v in given.items() if k in DEFAULTS}}
    try:
        hp["C"], hp["holdout"] = float(hp["C"]), float(hp["holdout"])
        hp["max_iter"], hp["seed"] = int(hp["max_iter"]), int(hp["seed"])
    except (TypeError, ValueError) as exc:
        raise BadInput(f"bad hyper-parameter value: {exc}") from None
    if hp["C"] <= 0 or hp["max_iter"] < 1 or not 0 <= hp["holdout"] < 1:
        raise BadInput(f"hyper-parameters out of range: {hp} (C > 0; max_iter >= 1; 0 <= holdout < 1)")
    return hp


def load_dataset(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``x`` flattened to float32 ``[N, 64]`` and ``y`` as int64 ``[N]`` from a ``.npz`` file."""
    if not path.is_file():
        raise BadInput(f"dataset not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [name for name in ("x", "y") if name not in data.files]
            if missing:
                raise BadInput(f"dataset {path} lacks array {missing[0]!r} (expected 'x' and 'y')")
            x, y = np.asarray(data["x"], dtype=np.float32), np.asarray(data["y"], dtype=np.int64)
    except (OSError, ValueError) as exc:
        raise BadInput(f"dataset {path} is not a readable .npz file: {exc}") from None
    if len(x) < 2 or x[0].size != N_FEATURES or y.shape != (len(x),):
        raise BadInput(f"dataset {path}: expected x [N, 1, 8, 8] and y [N], got {x.shape} and {y.shape}")
    return x.reshape(len(x), N_FEATURES), y


def main() -> int:
    try:
        dataset, out_dir = _env_path("FEDGE_DATASET_PATH"), _env_path("FEDGE_OUTPUT_DIR")
        metrics_file = _env_path("FEDGE_METRICS_FILE")
        hp = read_hyperparameters()
        x, y = load_dataset(dataset)
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    import sklearn
    import skops.io
    from sklearn.linear_model import LogisticRegression

    order = np.random.default_rng(hp["seed"]).permutation(len(x))
    n_holdout = round(len(x) * hp["holdout"])
    train_idx, holdout_idx = order[: len(x) - n_holdout], order[len(x) - n_holdout :]
    print(f"training LogisticRegression on {len(train_idx)} samples with {json.dumps(hp)}", flush=True)
    started = time.perf_counter()
    model = LogisticRegression(C=hp["C"], max_iter=hp["max_iter"], random_state=hp["seed"])
    model.fit(x[train_idx], y[train_idx])
    probabilities = model.predict_proba(x[train_idx])
    loss = float(-np.mean(np.log(np.clip(probabilities[np.arange(len(train_idx)), y[train_idx]], 1e-12, 1))))
    record = {
        "step": 1,
        "progress": 1.0,
        "loss": loss,
        "train_accuracy": float(model.score(x[train_idx], y[train_idx])),
        "holdout_accuracy": float(model.score(x[holdout_idx], y[holdout_idx])) if n_holdout else None,
        "iterations": int(np.max(model.n_iter_)),
        "fit_seconds": round(time.perf_counter() - started, 3),
    }
    metrics_file.parent.mkdir(parents=True, exist_ok=True)
    with metrics_file.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps(record), flush=True)

    out_dir.mkdir(parents=True, exist_ok=True)
    skops.io.dump(model, out_dir / "model.skops")
    meta = {
        "framework": "sklearn",
        "format": "skops",
        "artifact": "model.skops",
        "input_name": "x",
        "input_shape": [None, N_FEATURES],
        "input_dtype": "float32",
        "output_name": "probabilities",
        "classes": [int(c) for c in model.classes_],
        "sklearn_version": sklearn.__version__,
    }
    (out_dir / "model.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out_dir / 'model.skops'} and model.json", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
