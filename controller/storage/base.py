"""The ArtifactStore interface. Object keys are UUIDs chosen by the controller, never client filenames."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

CHUNK_SIZE = 1024 * 1024
_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class StorageError(Exception):
    """The store failed (unreachable, permission, disk full...)."""


class ObjectNotFound(StorageError):
    """No object under that bucket/key."""


class Readable(Protocol):
    """Anything with ``read(n) -> bytes`` (returns b"" at the end)."""

    def read(self, n: int = -1, /) -> bytes: ...


@dataclass(frozen=True)
class ObjectInfo:
    """What the store knows about one object."""

    key: str
    size: int
    modified: float  # POSIX timestamp
    token: str = ""
    """Changes whenever the object's bytes may have changed (S3: ETag, version id, Last-Modified; local
    file: size, mtime, ctime and inode, where ctime cannot be set back from user space). Empty: unknown."""


def check_key(key: str) -> str:
    """Refuse keys that could escape a directory or confuse a backend."""
    if not _KEY_RE.match(key) or ".." in key:
        raise ValueError(f"invalid object key {key!r}")
    return key


def check_bucket(bucket: str) -> str:
    """Refuse bucket names S3 would refuse."""
    if not _BUCKET_RE.match(bucket):
        raise ValueError(f"invalid bucket name {bucket!r}")
    return bucket


class ArtifactStore(ABC):
    """Bytes by (bucket, key). Writes are all-or-nothing: a failed ``put`` leaves no object."""

    @abstractmethod
    def ensure_bucket(self, bucket: str) -> None:
        """Create the bucket if it does not exist."""

    @abstractmethod
    def put(
        self, bucket: str, key: str, source: Readable, content_type: str = "application/octet-stream"
    ) -> int:
        """Stream ``source`` to the object until EOF; return the byte count. Atomic: on any exception
        raised by ``source`` or the backend no object is left under ``key``."""

    @abstractmethod
    def open(self, bucket: str, key: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        """Stream the object's bytes. Raises ObjectNotFound before yielding if it does not exist."""

    @abstractmethod
    def stat(self, bucket: str, key: str) -> ObjectInfo:
        """Size and modification time; ObjectNotFound if absent."""

    @abstractmethod
    def delete(self, bucket: str, key: str) -> None:
        """Remove the object; no error if it is already gone."""

    @abstractmethod
    def list(self, bucket: str) -> Iterator[ObjectInfo]:
        """Every object in the bucket."""

    @abstractmethod
    def health(self) -> None:
        """Raise StorageError if the store cannot be used."""

    def abort_incomplete_uploads(self, bucket: str, started_before: float) -> int:
        """Abort uploads a crashed writer left unfinished (started before the Unix time ``started_before``);
        the count aborted. Stores whose writes leave nothing half-done outside their own start-up cleanup
        (the local store removes its temp files when it opens) have none."""
        return 0

    def presigned_get(self, bucket: str, key: str) -> str | None:
        """A short-lived URL a device may GET the object from directly, or None when this store has
        none (then the controller streams the bytes). The URL carries no integrity: the device checks
        the SHA-256 against the signed chain hash as for every download."""
        return None

    def exists(self, bucket: str, key: str) -> bool:
        """True if the object exists."""
        try:
            self.stat(bucket, key)
        except ObjectNotFound:
            return False
        return True

    def read_all(self, bucket: str, key: str) -> bytes:
        """Whole object in memory (small objects and tests only)."""
        return b"".join(self.open(bucket, key))
