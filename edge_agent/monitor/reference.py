"""Drift reference data sets: named by the signed desired state (``model.reference``), fetched and
SHA-256 checked with the one verified fetch (:func:`edge_agent.deploy.fetch.fetch_verified`), kept under
``<state_dir>/references/`` with an index of which model version uses which set.

A reference set is a registered data set in one of two formats, told apart by its bytes:

- ``.npz`` (a zip): the array ``x`` (n rows; further axes are flattened into features) and optionally
  ``feature_names`` (strings, one per feature); without ``x``, every 1-D array of the same length is a
  feature column;
- CSV with a header row of feature names (comma separated, numbers only).

It must hold at least 2 rows of finite numbers; beyond :data:`MAX_ROWS` rows an evenly spaced sample is
kept (Evidently's checks then take the same time whatever the set's size).
"""

from __future__ import annotations

import io
import json
import logging
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.deploy.fetch import Fetcher, fetch_verified, verify_file
from fedge_common.files import atomic_write
from fedge_protocol import DatasetReference

log = logging.getLogger("fedge.agent.monitor")
MAX_ROWS = 5000


class ReferenceInvalid(ValueError):
    """The reference data set has the right hash but cannot serve as a reference (format, values)."""


def _columns_from_npz(raw: bytes) -> tuple[np.ndarray, list[str]]:
    with np.load(io.BytesIO(raw), allow_pickle=False) as data:
        names = list(data.files)
        if "x" in names:
            x = np.asarray(data["x"])
            if x.ndim < 1 or x.shape[0] < 1:
                raise ReferenceInvalid("array 'x' is empty")
            matrix = x.reshape(x.shape[0], -1) if x.ndim > 1 else x.reshape(-1, 1)
            features = (
                [str(n) for n in np.asarray(data["feature_names"]).ravel()]
                if "feature_names" in names
                else []
            )
        else:
            cols = {n: np.asarray(data[n]) for n in names if np.asarray(data[n]).ndim == 1}
            lengths = {c.shape[0] for c in cols.values()}
            if not cols or len(lengths) != 1:
                raise ReferenceInvalid("an .npz reference needs 'x' or 1-D columns of one length")
            features = sorted(cols)
            matrix = np.stack([cols[n] for n in features], axis=1)
    if features and len(features) != matrix.shape[1]:
        raise ReferenceInvalid(f"{len(features)} feature_names for {matrix.shape[1]} features")
    return matrix, features


def _columns_from_csv(raw: bytes) -> tuple[np.ndarray, list[str]]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ReferenceInvalid("a reference is .npz or UTF-8 CSV") from exc
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) < 2:
        raise ReferenceInvalid("a CSV reference needs a header and at least one row")
    header = [h.strip() for h in lines[0].split(",")]
    try:
        rows = [[float(v) for v in line.split(",")] for line in lines[1:]]
    except ValueError as exc:
        raise ReferenceInvalid(f"a CSV reference holds numbers only: {exc}") from exc
    if any(len(r) != len(header) for r in rows):
        raise ReferenceInvalid("every CSV row needs one value per header column")
    return np.asarray(rows, dtype=np.float64), header


def load_reference(path: Path) -> Any:
    """The reference as a pandas DataFrame of float64 feature columns (``f0``, ``f1``... by default)."""
    import pandas as pd

    raw = path.read_bytes()
    try:
        matrix, names = (
            _columns_from_npz(raw) if zipfile.is_zipfile(io.BytesIO(raw)) else _columns_from_csv(raw)
        )
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        if isinstance(exc, ReferenceInvalid):
            raise
        raise ReferenceInvalid(f"cannot read the reference: {exc}") from exc
    try:
        matrix = matrix.astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise ReferenceInvalid(f"the reference is not numeric: {exc}") from exc
    if matrix.shape[0] < 2 or matrix.shape[1] < 1:
        raise ReferenceInvalid(f"a reference needs at least 2 rows and 1 feature, not {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise ReferenceInvalid("the reference holds NaN or infinite values")
    if matrix.shape[0] > MAX_ROWS:
        matrix = matrix[np.linspace(0, matrix.shape[0] - 1, MAX_ROWS).astype(int)]
    return pd.DataFrame(matrix, columns=names or [f"f{i}" for i in range(matrix.shape[1])])


def model_key(model_id: str, version: int) -> str:
    return f"{model_id}@{version}"


@dataclass(frozen=True)
class StoredReference:
    reference: DatasetReference
    path: Path


class ReferenceStore:
    """Fetches the references desired states name and remembers which model version uses which."""

    def __init__(self, state_dir: Path, fetcher: Fetcher | None) -> None:
        self.dir = state_dir / "references"
        self.fetcher = fetcher
        self._lock = threading.Lock()

    @property
    def _index_path(self) -> Path:
        return self.dir / "index.json"

    def _index(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self._index_path.read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def path_for(self, ref: DatasetReference) -> Path:
        safe = "".join(c for c in ref.dataset_id if c.isalnum() or c in "-_")[:64] or "dataset"
        return self.dir / f"{safe}-{ref.sha256[:16]}.data"

    def ensure(self, model_id: str, version: int, ref: DatasetReference) -> StoredReference:
        """Fetch (or re-verify) the reference of a model version and index it. Raises
        :class:`~edge_agent.deploy.fetch.ArtifactRefused` (download failed, or not the signed bytes)."""
        with self._lock:
            self.dir.mkdir(parents=True, exist_ok=True)
            dest = self.path_for(ref)
            if dest.exists():
                verify_file(dest, ref.sha256)
            else:
                if self.fetcher is None:
                    raise ReferenceInvalid("no link to fetch the reference data set with")
                fetch_verified(self.fetcher, ref.download, ref.sha256, dest)
            index = self._index()
            index[model_key(model_id, version)] = {
                "reference": ref.model_dump(mode="json"),
                "file": dest.name,
            }
            atomic_write(self._index_path, json.dumps(index, sort_keys=True).encode())
            return StoredReference(ref, dest)

    def indexed(self, model_id: str, version: int) -> StoredReference | None:
        """The indexed reference of a model version, not hashed (see :meth:`lookup`)."""
        entry = self._index().get(model_key(model_id, version))
        if not entry:
            return None
        return StoredReference(
            DatasetReference.model_validate(entry["reference"]), self.dir / str(entry["file"])
        )

    def lookup(self, model_id: str, version: int) -> StoredReference | None:
        """The indexed reference of a model version, its file hashed again (raises DigestMismatch when it
        changed on disk)."""
        stored = self.indexed(model_id, version)
        if stored is not None:
            verify_file(stored.path, stored.reference.sha256)
        return stored

    def sync_desired(self, desired: dict[str, Any]) -> StoredReference | None:
        """Fetch the reference a verified desired-state payload names for its model (None: none named)."""
        model = desired.get("model") or {}
        raw = model.get("reference")
        if not raw:
            return None
        ref = DatasetReference.model_validate(raw)
        return self.ensure(str(model["model_id"]), int(model["version"]), ref)
