"""Write scikit-learn's handwritten digits as a fedge ``.npz`` dataset.

The file holds ``x`` (float32, shape ``[N, 1, 8, 8]``, pixel values divided by 16 so they lie in [0, 1])
and ``y`` (int64 class labels 0-9). The digits ship with scikit-learn, so nothing is downloaded.

    python examples/make_digits_npz.py OUT.npz [--limit N]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from numpy.typing import NDArray


def load_digits_arrays(limit: int | None = None) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """The digits as ``(x, y)`` in the dataset layout described above (first ``limit`` samples)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (np.asarray(bunch.images, dtype=np.float32) / np.float32(16.0)).reshape(-1, 1, 8, 8)
    y = np.asarray(bunch.target, dtype=np.int64)
    if limit is not None:
        x, y = x[:limit], y[:limit]
    return np.ascontiguousarray(x), y


def write_digits_npz(path: Path, limit: int | None = None) -> Path:
    """Write the digits dataset to ``path`` (parents created) and return it."""
    x, y = load_digits_arrays(limit)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:  # a file object, so numpy does not append ".npz" to the name
        np.savez(f, x=x, y=y)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", type=Path, help="where to write the .npz file")
    parser.add_argument("--limit", type=int, default=None, help="keep only the first N samples")
    args = parser.parse_args(argv)
    path = write_digits_npz(args.out, args.limit)
    print(f"wrote {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
