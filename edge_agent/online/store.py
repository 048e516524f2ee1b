"""A learner's files on disk: the checkpoint (the running state) and the saved versions.

``<state_dir>/online/<name>/``::

    checkpoint.model   backend state (bytes)                         written first
    checkpoint.json    counters, transformer, validation window, the SHA-256 of checkpoint.model
    versions/000003.model, versions/000003.json   a saved version and its meta (SHA-256, loss, ...)
    last_good.json     the newest saved version's meta                written after its files

Every file is replaced atomically (``fedge_common.files.atomic_write``: temp + fsync + rename). A file
is used only when its SHA-256 matches the one its JSON names, so a crash between the two writes leaves
a checkpoint that is refused on start (the learner then falls back to the last good version).

``background=True`` (the agent's service) hands the writes, in order, to one writer thread, so the
fsyncs stay off the ingest path; the bytes and their SHA-256 are fixed when the write is queued, reads
and :meth:`LearnerStore.flush` wait for the queue.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import threading
import time
from collections.abc import Callable
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

    def __init__(self, directory: Path, keep_versions: int = 3, *, background: bool = False) -> None:
        self.directory, self.keep_versions = directory, keep_versions
        self.versions_dir = directory / "versions"
        self.versions_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        found = self.last_good_meta()
        self._version = int(found["version"]) if found else 0
        self.write_errors = 0
        self._queue: queue.Queue[Callable[[], None] | None] | None = None
        self._thread: threading.Thread | None = None
        if background:
            self._queue = queue.Queue()
            self._thread = threading.Thread(
                target=self._drain, name=f"online-store-{directory.name}", daemon=True
            )
            self._thread.start()

    def _write(self, job: Callable[[], None]) -> None:
        if self._queue is None:
            job()
        else:
            self._queue.put(job)

    def _drain(self) -> None:
        assert self._queue is not None
        work = self._queue
        while True:
            job = work.get()
            try:
                if job is None:
                    return
                job()
            except OSError:
                self.write_errors += 1
                log.exception("online learner store %s: a write failed", self.directory)
            finally:
                work.task_done()

    def flush(self) -> None:
        """Wait until every queued write is on disk."""
        if self._queue is not None:
            self._queue.join()

    def close(self) -> None:
        """Flush and stop the writer thread (background stores)."""
        if self._queue is not None and self._thread is not None:
            self._queue.put(None)
            self._thread.join(60)
            self._queue, self._thread = None, None

    # ----------------------------------------------------------- checkpoint
    def write_checkpoint(self, model: bytes, meta: dict[str, Any]) -> None:
        body = json.dumps({**meta, "model_sha256": _sha256(model), "written_at": time.time()}).encode()

        def write() -> None:
            atomic_write(self.directory / "checkpoint.model", model)
            atomic_write(self.directory / "checkpoint.json", body)

        self._write(write)

    def read_checkpoint(self) -> tuple[bytes, dict[str, Any]] | None:
        """The checkpoint, or None when there is none or its model does not match its SHA-256."""
        self.flush()
        return self._pair(
            self.directory / "checkpoint.model", self.directory / "checkpoint.json", "model_sha256"
        )

    # ------------------------------------------------------------- versions
    def save_version(self, model: bytes, meta: dict[str, Any]) -> SavedVersion:
        """Write the next version (model, then meta, then the last-good pointer); prune old ones."""
        self._version += 1
        version, digest = self._version, _sha256(model)
        path = self.versions_dir / f"{version:06d}.model"
        body = {
            **meta,
            "version": version,
            "sha256": digest,
            "size_bytes": len(model),
            "saved_at": time.time(),
        }
        encoded = json.dumps(body).encode()

        def write() -> None:
            atomic_write(path, model)
            atomic_write(self.versions_dir / f"{version:06d}.json", encoded)
            atomic_write(self.directory / "last_good.json", encoded)
            self._prune(version)

        self._write(write)
        return SavedVersion(version, digest, len(model), path, body)

    def last_good_meta(self) -> dict[str, Any] | None:
        try:
            meta: dict[str, Any] = json.loads((self.directory / "last_good.json").read_text())
        except (OSError, ValueError):
            return None
        return meta

    def last_good(self) -> tuple[bytes, dict[str, Any]] | None:
        """The newest saved version (model bytes, meta), SHA-256 checked; None when there is none."""
        self.flush()
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
