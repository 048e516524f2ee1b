"""Reference data sets: fetched with the verified fetch (a wrong hash is refused, nothing left behind),
read as .npz or CSV, re-hashed before use."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest

from edge_agent.deploy.fetch import DigestMismatch
from edge_agent.monitor.reference import ReferenceInvalid, ReferenceStore, load_reference
from fedge_protocol import DatasetReference


class BytesFetcher:
    """Serves fixed bytes for any path (what ControllerLink.download does over HTTP)."""

    def __init__(self, data: bytes) -> None:
        self.data, self.calls = data, 0

    def download(self, path: str, dest: Path) -> str:
        self.calls += 1
        dest.write_bytes(self.data)
        return hashlib.sha256(self.data).hexdigest()


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def _ref(data: bytes, sha: str | None = None) -> DatasetReference:
    return DatasetReference(
        dataset_id="ds-1",
        sha256=sha or hashlib.sha256(data).hexdigest(),
        download="/v1/devices/d/datasets/ds-1",
    )


def test_a_reference_with_the_wrong_hash_is_refused(tmp_path: Path) -> None:
    data = _npz(x=np.ones((10, 3)))
    store = ReferenceStore(tmp_path, BytesFetcher(data))
    with pytest.raises(DigestMismatch, match="differs from the signed chain record"):
        store.ensure("m", 1, _ref(data, sha="ab" * 32))
    assert list((tmp_path / "references").iterdir()) == []  # no file, no index entry
    assert store.lookup("m", 1) is None


def test_fetched_once_indexed_and_rehashed_before_use(tmp_path: Path) -> None:
    x = np.arange(30, dtype=np.float64).reshape(10, 3)
    data = _npz(x=x, feature_names=np.array(["a", "b", "c"]))
    fetcher = BytesFetcher(data)
    store = ReferenceStore(tmp_path, fetcher)
    stored = store.ensure("m", 1, _ref(data))
    store.sync_desired({"model": {"model_id": "m", "version": 1, "reference": _ref(data).model_dump()}})
    assert fetcher.calls == 1  # the second time the file was verified, not fetched
    frame = load_reference(stored.path)
    assert list(frame.columns) == ["a", "b", "c"] and frame.shape == (10, 3)
    assert np.array_equal(frame.to_numpy(), x)
    found = store.lookup("m", 1)
    assert found is not None and found.path == stored.path
    stored.path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # changed on disk
    with pytest.raises(DigestMismatch):
        store.lookup("m", 1)
    assert store.sync_desired({"model": {"model_id": "m", "version": 1}}) is None


def test_reference_formats(tmp_path: Path) -> None:
    csv = tmp_path / "r.csv"
    csv.write_text("load,temp\n1.0,20\n2.5,21\n3,19.5\n")
    frame = load_reference(csv)
    assert list(frame.columns) == ["load", "temp"] and frame["load"].tolist() == [1.0, 2.5, 3.0]
    images = tmp_path / "i.npz"
    images.write_bytes(_npz(x=np.zeros((4, 1, 2, 2)), y=np.arange(4)))
    assert list(load_reference(images).columns) == ["f0", "f1", "f2", "f3"]
    cols = tmp_path / "c.npz"
    cols.write_bytes(_npz(power=np.ones(5), hour=np.arange(5.0)))
    assert list(load_reference(cols).columns) == ["hour", "power"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"load\n1.0\nnan\n", "NaN or infinite"),
        (b"load,temp\n1,2\n3\n", "one value per header column"),
        (b"load\nabc\n", "numbers only"),
        (b"load\n1\n", "header and at least one row|at least 2 rows"),
        (b"\xff\xfe\x00", "npz or UTF-8 CSV"),
    ],
)
def test_unusable_references_are_refused(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.data"
    path.write_bytes(content)
    with pytest.raises(ReferenceInvalid, match=message):
        load_reference(path)
