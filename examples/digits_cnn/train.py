"""Train the seed's MNIST-style CNN (D3.4, Listing 1) on 8x8 digits, following fedge's training contract.

Reads ``FEDGE_DATASET_PATH`` (``.npz`` with ``x`` float32 ``[N, 1, 8, 8]`` in [0, 1] and ``y`` int64),
``FEDGE_HYPERPARAMETERS`` (JSON: ``epochs``, ``lr``, ``batch_size``, ``seed``, ``holdout``, ``threads``),
writes ``FEDGE_OUTPUT_DIR/model.pt2`` (a ``torch.export`` program: loadable with ``torch.export.load``
without this file) and ``model.json``, and appends one JSON line per epoch to ``FEDGE_METRICS_FILE``.

    python -m examples.digits_cnn.train        # or: python examples/digits_cnn/train.py

Exit status 0 on success, 2 for bad input (missing variable, unreadable dataset, bad hyper-parameter),
1 for anything else. Self-contained on purpose: copy this file to start your own training program.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

DEFAULTS: dict[str, Any] = {
    "epochs": 8,
    "lr": 1e-3,
    "batch_size": 64,
    "seed": 0,
    "holdout": 0.2,
    "threads": 0,
}
INPUT_SHAPE = (1, 8, 8)
N_CLASSES = 10


class BadInput(Exception):
    """The job's inputs are unusable; the message says which and why."""


class DigitsNetwork(nn.Module):
    """Listing 1's network with 3x3 convolutions padded by 1 so that an 8x8 image survives both poolings.

    8x8 -> conv 16 -> pool 4x4 -> conv 32 -> pool 2x2 -> 128 features (Listing 1 has 800 on 28x28)
    -> 1024 -> 512 -> 10, ending in Softmax like the seed: ``forward`` returns class probabilities.
    Training uses ``logits`` with a cross-entropy loss (softmax + NLL in one stable step).
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(32 * 2 * 2, 1024),
            nn.ReLU(),
            nn.Linear(1024, 512),
            nn.ReLU(),
            nn.Linear(512, N_CLASSES),
        )
        self.softmax = nn.Softmax(dim=1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))  # type: ignore[no-any-return]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.softmax(self.logits(x))  # type: ignore[no-any-return]


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
        hp["epochs"], hp["batch_size"], hp["seed"] = int(hp["epochs"]), int(hp["batch_size"]), int(hp["seed"])
        hp["threads"], hp["lr"], hp["holdout"] = int(hp["threads"]), float(hp["lr"]), float(hp["holdout"])
    except (TypeError, ValueError) as exc:
        raise BadInput(f"bad hyper-parameter value: {exc}") from None
    if hp["epochs"] < 1 or hp["batch_size"] < 1 or hp["lr"] <= 0 or not 0 <= hp["holdout"] < 1:
        raise BadInput(
            f"hyper-parameters out of range: {hp} (epochs, batch_size >= 1; lr > 0; 0 <= holdout < 1)"
        )
    return hp


def load_dataset(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``x`` as float32 ``[N, 1, 8, 8]`` and ``y`` as int64 ``[N]`` from a ``.npz`` file."""
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
    if x.ndim == 3:
        x = x[:, None]
    if x.shape[1:] != INPUT_SHAPE or y.shape != (len(x),) or len(x) < 2:
        raise BadInput(f"dataset {path}: expected x [N, 1, 8, 8] and y [N], got {x.shape} and {y.shape}")
    if y.min() < 0 or y.max() >= N_CLASSES:
        raise BadInput(f"dataset {path}: labels must lie in 0..{N_CLASSES - 1}")
    return x, y


def split(n: int, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and holdout indices: a seeded permutation, the last ``holdout`` fraction held out."""
    order = np.random.default_rng(seed).permutation(n)
    n_holdout = round(n * holdout)
    return order[: n - n_holdout], order[n - n_holdout :]


def accuracy(model: DigitsNetwork, x: torch.Tensor, y: torch.Tensor) -> float | None:
    if len(x) == 0:
        return None
    with torch.no_grad():
        return float((model.logits(x).argmax(dim=1) == y).float().mean())


def train(hp: dict[str, Any], x_np: np.ndarray, y_np: np.ndarray, metrics_file: Path) -> DigitsNetwork:
    """Train with Adam and cross-entropy; one metrics line per epoch."""
    torch.manual_seed(hp["seed"])
    torch.use_deterministic_algorithms(True)
    if hp["threads"] > 0:
        torch.set_num_threads(hp["threads"])
    train_idx, holdout_idx = split(len(x_np), hp["holdout"], hp["seed"])
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
    x_train, y_train, x_hold, y_hold = x[train_idx], y[train_idx], x[holdout_idx], y[holdout_idx]
    model = DigitsNetwork()
    optimizer = torch.optim.Adam(model.parameters(), lr=hp["lr"])
    loss_fn = nn.CrossEntropyLoss()
    shuffle = torch.Generator().manual_seed(hp["seed"])
    for epoch in range(1, hp["epochs"] + 1):
        model.train()
        total, started = 0.0, time.perf_counter()
        for batch in torch.randperm(len(x_train), generator=shuffle).split(hp["batch_size"]):
            optimizer.zero_grad()
            loss = loss_fn(model.logits(x_train[batch]), y_train[batch])
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        model.eval()
        record = {
            "step": epoch,
            "epoch": epoch,
            "progress": round(epoch / hp["epochs"], 6),
            "loss": total / len(x_train),
            "train_accuracy": accuracy(model, x_train, y_train),
            "holdout_accuracy": accuracy(model, x_hold, y_hold),
            "epoch_seconds": round(time.perf_counter() - started, 3),
        }
        with metrics_file.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        print(json.dumps(record), flush=True)
    return model


def save(model: DigitsNetwork, out_dir: Path) -> None:
    """``model.pt2`` (``torch.export``, batch dimension dynamic) and ``model.json``."""
    model.eval()
    example = torch.zeros((2, *INPUT_SHAPE), dtype=torch.float32)
    program = torch.export.export(model, (example,), dynamic_shapes={"x": {0: torch.export.Dim.DYNAMIC}})
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, out_dir / "model.pt2")
    meta = {
        "framework": "pytorch",
        "format": "torch.export",
        "artifact": "model.pt2",
        "input_name": "x",
        "input_shape": [None, *INPUT_SHAPE],
        "input_dtype": "float32",
        "output_name": "probabilities",
        "classes": list(range(N_CLASSES)),
        "torch_version": torch.__version__.split("+")[0],
    }
    (out_dir / "model.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def main() -> int:
    try:
        dataset, out_dir = _env_path("FEDGE_DATASET_PATH"), _env_path("FEDGE_OUTPUT_DIR")
        metrics_file = _env_path("FEDGE_METRICS_FILE")
        hp = read_hyperparameters()
        x, y = load_dataset(dataset)
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"training DigitsNetwork on {len(x)} samples with {json.dumps(hp)}", flush=True)
    metrics_file.parent.mkdir(parents=True, exist_ok=True)
    model = train(hp, x, y, metrics_file)
    save(model, out_dir)
    print(f"wrote {out_dir / 'model.pt2'} and model.json", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
