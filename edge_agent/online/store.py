"""A learner's files on disk: the checkpoint (the running state) and the saved versions.

``<state_dir>/online/<name>/``::

    checkpoint.model   backend state (bytes)                         written first
    checkpoint.json    counters, transformer, validation window, the SHA-256 of checkpoint.model
    versions/000003.model, versions/000003.json   a saved version and its meta (SHA-256, loss, ...)
    last_good.json     the newest saved version's meta                written after its files

Every file is replaced atomically (``fedge_common.files.atomic_write``: temp + fsync + rename). A file
is used only when its SHA-256 matches the one its JSON names, so a crash between the two writes leaves
a checkpoint that is refused on start (the learner then falls back to the last good version).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedge_common.files import atomic_write

log = logging.getLogger("fedge.agent.online")


@dataclass(frozen=True)
class SavedVersion:
    """One saved local version of a learner's model."""

    version: int
    sha256: str
    size_bytes: int
    path: Path
    meta: dict[str, Any]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class LearnerStore:
    """The directory of one learner."""

    def __init__(self, directory: Path, keep_versions: int = 3) -> None:
        self.directory, self.keep_versions = directory, keep_versions
        self.versions_dir = directory / "versions"
        self.versions_dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    # ----------------------------------------------------------- checkpoint
    def write_checkpoint(self, model: bytes, meta: dict[str, Any]) -> None:
        atomic_write(self.directory / "checkpoint.model", model)
        body = {**meta, "model_sha256": _sha256(model), "written_at": time.time()}
        atomic_write(self.directory / "checkpoint.json", json.dumps(body).encode())

    def read_checkpoint(self) -> tuple[bytes, dict[str, Any]] | None:
        """The checkpoint, or None when there is none or its model does not match its SHA-256."""
        return self._pair(
            self.directory / "checkpoint.model", self.directory / "checkpoint.json", "model_sha256"
        )

    # ------------------------------------------------------------- versions
    def save_version(self, model: bytes, meta: dict[str, Any]) -> SavedVersion:
        """Write the next version (model, then meta, then the last-good pointer); prune old ones."""
        previous = self.last_good_meta()
        version = int(previous["version"]) + 1 if previous else 1
        digest = _sha256(model)
        path = self.versions_dir / f"{version:06d}.model"
        atomic_write(path, model)
        body = {
            **meta,
            "version": version,
            "sha256": digest,
            "size_bytes": len(model),
            "saved_at": time.time(),
        }
        encoded = json.dumps(body).encode()
        atomic_write(self.versions_dir / f"{version:06d}.json", encoded)
        atomic_write(self.directory / "last_good.json", encoded)
        self._prune(version)
        return SavedVersion(version, digest, len(model), path, body)

    def last_good_meta(self) -> dict[str, Any] | None:
        try:
            meta: dict[str, Any] = json.loads((self.directory / "last_good.json").read_text())
        except (OSError, ValueError):
            return None
        return meta

    def last_good(self) -> tuple[bytes, dict[str, Any]] | None:
        """The newest saved version (model bytes, meta), SHA-256 checked; None when there is none."""
        meta = self.last_good_meta()
        if meta is None:
            return None
        found = self._pair(self.versions_dir / f"{int(meta['version']):06d}.model", None, "sha256", meta)
        return found

    def _pair(
        self, model_path: Path, meta_path: Path | None, key: str, meta: dict[str, Any] | None = None
    ) -> tuple[bytes, dict[str, Any]] | None:
        try:
            if meta is None:
                assert meta_path is not None
                meta = json.loads(meta_path.read_text())
            model = model_path.read_bytes()
        except (OSError, ValueError):
            return None
        assert meta is not None
        if _sha256(model) != meta.get(key):
            log.warning("%s does not match the SHA-256 recorded for it; not using it", model_path)
            return None
        return model, meta

    def _prune(self, newest: int) -> None:
        for path in self.versions_dir.glob("*.model"):
            try:
                number = int(path.stem)
            except ValueError:
                continue
            if number <= newest - self.keep_versions:
                path.unlink(missing_ok=True)
                path.with_suffix(".json").unlink(missing_ok=True)
