"""Digits split over simulated devices: a stratified test set, then IID or Dirichlet(alpha) label skew.

* :func:`stratified_split` holds out ``test_fraction`` (20 %) of every class, seeded;
* :func:`iid_partition` deals the remaining examples out evenly at random;
* :func:`dirichlet_partition` gives device ``k`` a share ``p_k ~ Dir(alpha)`` of every class (small
  ``alpha``: each device sees few classes; ``alpha`` -> infinity: IID), redrawn until every device has
  at least ``min_size`` examples;
* :func:`make_federated_digits` does all three on scikit-learn's digits and also deals the test set out
  IID, so that the example-weighted mean of the devices' test accuracies is the accuracy on the whole
  test set; :meth:`FederatedData.write` stores one ``.npz`` per device in the agent's data layout.

Everything is a pure function of its seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "FederatedData",
    "dirichlet_partition",
    "iid_partition",
    "make_federated_digits",
    "stratified_split",
]

IntArray = NDArray[np.int64]


def stratified_split(y: NDArray[np.integer], test_fraction: float, seed: int) -> tuple[IntArray, IntArray]:
    """Indices ``(train, test)`` holding out ``round(test_fraction * n_c)`` of each class ``c``."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == label))
        cut = round(test_fraction * len(idx))
        test.append(idx[:cut])
        train.append(idx[cut:])
    return np.sort(np.concatenate(train)).astype(np.int64), np.sort(np.concatenate(test)).astype(np.int64)


def iid_partition(num_examples: int, num_clients: int, seed: int) -> list[IntArray]:
    """Indices of ``num_examples`` dealt out at random into ``num_clients`` near-equal parts."""
    if num_clients < 1 or num_examples < num_clients:
        raise ValueError(f"cannot split {num_examples} examples over {num_clients} clients")
    perm = np.random.default_rng(seed).permutation(num_examples)
    return [np.sort(part).astype(np.int64) for part in np.array_split(perm, num_clients)]


def dirichlet_partition(
    y: NDArray[np.integer],
    num_clients: int,
    alpha: float,
    seed: int,
    *,
    min_size: int = 10,
    max_tries: int = 1000,
) -> list[IntArray]:
    """Label-skewed parts: for each class, its examples are shared among clients by ``Dir(alpha)``."""
    if alpha <= 0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    if num_clients < 1 or len(y) < num_clients * min_size:
        raise ValueError(f"cannot give {num_clients} clients {min_size} of {len(y)} examples each")
    rng = np.random.default_rng(seed)
    for _ in range(max_tries):
        parts: list[list[int]] = [[] for _ in range(num_clients)]
        for label in np.unique(y):
            idx = rng.permutation(np.flatnonzero(y == label))
            shares = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
            for client, chunk in enumerate(np.split(idx, cuts)):
                parts[client].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    raise ValueError(f"no Dir({alpha}) split gave every client {min_size} examples in {max_tries} tries")


@dataclass(frozen=True)
class FederatedData:
    """Per-client training and test arrays, and the whole test set."""

    train: list[tuple[NDArray[np.float32], IntArray]]
    test: list[tuple[NDArray[np.float32], IntArray]]
    x_test: NDArray[np.float32]
    y_test: IntArray

    @property
    def num_clients(self) -> int:
        return len(self.train)

    def write(self, directory: Path) -> list[Path]:
        """One ``client-<k>.npz`` per client with ``x``, ``y``, ``x_test``, ``y_test``."""
        directory.mkdir(parents=True, exist_ok=True)
        paths = []
        for k, ((x, y), (xt, yt)) in enumerate(zip(self.train, self.test, strict=True)):
            path = directory / f"client-{k}.npz"
            with path.open("wb") as f:
                np.savez(f, x=x, y=y, x_test=xt, y_test=yt)
            paths.append(path)
        return paths


def load_digits_arrays() -> tuple[NDArray[np.float32], IntArray]:
    """scikit-learn's digits as ``x`` ``[N, 1, 8, 8]`` in [0, 1] and ``y`` ``[N]`` (nothing downloaded)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (np.asarray(bunch.images, dtype=np.float32) / np.float32(16.0)).reshape(-1, 1, 8, 8)
    return np.ascontiguousarray(x), np.asarray(bunch.target, dtype=np.int64)


def make_federated_digits(
    num_clients: int = 10,
    *,
    alpha: float | None = 0.5,
    seed: int = 0,
    test_fraction: float = 0.2,
    min_size: int = 10,
) -> FederatedData:
    """Digits over ``num_clients``: 20 % stratified test set, the rest Dirichlet(``alpha``) (None: IID)."""
    x, y = load_digits_arrays()
    train_idx, test_idx = stratified_split(y, test_fraction, seed)
    x_train, y_train = x[train_idx], y[train_idx]
    x_test, y_test = x[test_idx], y[test_idx]
    if alpha is None:
        parts = iid_partition(len(y_train), num_clients, seed + 1)
    else:
        parts = dirichlet_partition(y_train, num_clients, alpha, seed + 1, min_size=min_size)
    test_parts = iid_partition(len(y_test), num_clients, seed + 2)
    return FederatedData(
        train=[(x_train[p], y_train[p]) for p in parts],
        test=[(x_test[p], y_test[p]) for p in test_parts],
        x_test=x_test,
        y_test=y_test,
    )
