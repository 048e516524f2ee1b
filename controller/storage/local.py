"""Local-filesystem ArtifactStore: ``<root>/<bucket>/<key>``, atomic writes (fedge_common.files: temp
file, fsync, rename)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from controller.storage.base import (
    CHUNK_SIZE,
    ArtifactStore,
    ObjectInfo,
    ObjectNotFound,
    Readable,
    StorageError,
    check_bucket,
    check_key,
)
from fedge_common.files import atomic_writer

_TMP_PREFIX = ".tmp-"


def _token(st: os.stat_result) -> str:
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}"


class _SourceFailed(Exception):
    """Carries an exception raised by the source (not by the filesystem) past the OSError handler."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class LocalArtifactStore(ArtifactStore):
    """Keeps objects as files. Temp files of interrupted writes are removed at start."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        for stale in self.root.glob(f"*/{_TMP_PREFIX}*"):
            stale.unlink(missing_ok=True)

    def _path(self, bucket: str, key: str) -> Path:
        return self.root / check_bucket(bucket) / check_key(key)

    def ensure_bucket(self, bucket: str) -> None:
        (self.root / check_bucket(bucket)).mkdir(parents=True, exist_ok=True)

    def put(
        self, bucket: str, key: str, source: Readable, content_type: str = "application/octet-stream"
    ) -> int:
        final = self._path(bucket, key)
        if not final.parent.is_dir():
            raise StorageError(f"bucket {bucket!r} does not exist")
        written = 0
        try:  # the temporary file is removed by atomic_writer on any failure
            with atomic_writer(final, mode=None, temp_prefix=f"{_TMP_PREFIX}{key}-") as fh:
                while True:
                    try:
                        chunk = source.read(CHUNK_SIZE)
                    except BaseException as exc:  # the source's own error, passed on unchanged
                        raise _SourceFailed(exc) from None
                    if not chunk:
                        break
                    fh.write(chunk)
                    written += len(chunk)
        except _SourceFailed as failed:
            raise failed.error from None
        except OSError as exc:
            raise StorageError(f"local store write failed: {exc}") from exc
        return written

    def open(self, bucket: str, key: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        path = self._path(bucket, key)
        try:
            fh = open(path, "rb")  # noqa: SIM115 - closed by the generator below
        except FileNotFoundError as exc:
            raise ObjectNotFound(f"{bucket}/{key}") from exc
        except OSError as exc:
            raise StorageError(f"local store read failed: {exc}") from exc
        return self._iter(fh, chunk_size)

    @staticmethod
    def _iter(fh: BinaryIO, chunk_size: int) -> Iterator[bytes]:
        with fh:
            while chunk := fh.read(chunk_size):
                yield chunk

    def stat(self, bucket: str, key: str) -> ObjectInfo:
        try:
            st = self._path(bucket, key).stat()
        except FileNotFoundError as exc:
            raise ObjectNotFound(f"{bucket}/{key}") from exc
        return ObjectInfo(key=key, size=st.st_size, modified=st.st_mtime, token=_token(st))

    def delete(self, bucket: str, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(bucket, key).unlink()

    def list(self, bucket: str) -> Iterator[ObjectInfo]:
        directory = self.root / check_bucket(bucket)
        if not directory.is_dir():
            return
        for entry in sorted(directory.iterdir()):
            if entry.name.startswith(_TMP_PREFIX) or not entry.is_file():
                continue
            st = entry.stat()
            yield ObjectInfo(key=entry.name, size=st.st_size, modified=st.st_mtime, token=_token(st))

    def health(self) -> None:
        if not os.access(self.root, os.W_OK):
            raise StorageError(f"{self.root} is not writable")
