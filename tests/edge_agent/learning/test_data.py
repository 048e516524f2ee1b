"""The device's local .npz: read without pickles, validated (shapes, dtypes, NaN, labels)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_agent.learning.data import DataError, load_local_data


def _write(path: Path, **arrays: object) -> Path:
    with path.open("wb") as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]
    return path


def test_a_valid_file_loads_as_float32_and_int64(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((5, 1, 8, 8))
    path = _write(tmp_path / "d.npz", x=x, y=np.arange(5, dtype=np.int32))

    data = load_local_data(path, num_classes=10)

    assert (data.x.dtype, data.y.dtype, data.x.shape) == (np.float32, np.int64, (5, 1, 8, 8))
    assert data.x_test is data.x  # no evaluation split: evaluate on the training arrays
    assert data.num_examples == 5


def test_an_evaluation_split_is_used_when_present(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "d.npz",
        x=np.zeros((4, 64)),
        y=np.zeros(4, dtype=np.int64),
        x_test=np.ones((2, 64)),
        y_test=np.ones(2, dtype=np.int64),
    )
    assert load_local_data(path).num_test_examples == 2


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.zeros((3, 64))}, "lacks \\['y'\\]"),
        ({"x": np.zeros((3, 64)), "y": np.zeros(4, dtype=np.int64)}, "y must be \\[N\\] with N = 3"),
        ({"x": np.zeros(3), "y": np.zeros(3, dtype=np.int64)}, "must be \\[N, features"),
        ({"x": np.array([[0.0, np.nan]]), "y": np.zeros(1, dtype=np.int64)}, "1 NaN or infinite"),
        ({"x": np.zeros((2, 2)), "y": np.array([0.5, 1.0])}, "integer class labels"),
        ({"x": np.zeros((2, 2)), "y": np.array([0, 12])}, "labels must be \\[0, 10\\)"),
        ({"x": np.array([["a", "b"]]), "y": np.zeros(1, dtype=np.int64)}, "must be numeric"),
        ({"x": np.zeros((2, 4)), "y": np.zeros(2, dtype=np.int64), "x_test": np.zeros((1, 4))}, "together"),
        (
            {
                "x": np.zeros((2, 4)),
                "y": np.zeros(2, dtype=np.int64),
                "x_test": np.zeros((1, 5)),
                "y_test": np.zeros(1, dtype=np.int64),
            },
            "x_test examples are",
        ),
    ],
)
def test_malformed_files_are_refused_with_the_reason(
    tmp_path: Path, arrays: dict[str, object], message: str
) -> None:
    path = _write(tmp_path / "d.npz", **arrays)
    with pytest.raises(DataError, match=message):
        load_local_data(path, num_classes=10)


def test_missing_and_unreadable_files_and_pickles_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_local_data(tmp_path / "absent.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable"):
        load_local_data(tmp_path / "junk.npz")
    pickled = _write(tmp_path / "p.npz", x=np.array([object()], dtype=object), y=np.zeros(1, dtype=np.int64))
    with pytest.raises(DataError, match="not a readable"):
        load_local_data(pickled)
