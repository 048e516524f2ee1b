"""Streaming hashes: SHA-256 (integrity, chain records) and MD5 (seed compatibility), computed while the
bytes pass through, with a size limit. Uploads, downloads and ``bench/hashing.py`` share this code."""

from __future__ import annotations

import base64
import hashlib
import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from controller.storage.base import CHUNK_SIZE, Readable


class SizeLimitExceeded(Exception):
    """More bytes arrived than the limit allows."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"upload exceeds the limit of {limit} bytes")
        self.limit = limit


class UploadAborted(Exception):
    """The producer side of a pipe went away (client disconnect, parse error)."""


@dataclass(frozen=True)
class Digests:
    """Hashes and size of a byte stream."""

    sha256: str
    md5: str
    size: int

    @property
    def digest_header(self) -> str:
        """RFC 3230 ``Digest`` header value."""
        return "sha-256=" + base64.b64encode(bytes.fromhex(self.sha256)).decode()


class HashingReader:
    """Wraps a reader; hashes and counts what is read; raises SizeLimitExceeded past ``limit``."""

    def __init__(self, source: Readable, limit: int | None = None) -> None:
        self.source = source
        self.limit = limit
        self._sha = hashlib.sha256()
        self._md5 = hashlib.md5(usedforsecurity=False)
        self.size = 0

    def read(self, n: int = -1, /) -> bytes:
        data = self.source.read(n)
        if data:
            self.size += len(data)
            if self.limit is not None and self.size > self.limit:
                raise SizeLimitExceeded(self.limit)
            self._sha.update(data)
            self._md5.update(data)
        return data

    def digests(self) -> Digests:
        """The hashes of everything read so far."""
        return Digests(self._sha.hexdigest(), self._md5.hexdigest(), self.size)


def hash_chunks(chunks: Iterable[bytes], *, md5: bool = True) -> Digests:
    """Hash an iterable of chunks (e.g. a stored object) without holding it in memory. ``md5=False``
    skips MD5 (a third of the cost) when only the SHA-256 is compared; ``Digests.md5`` is then empty."""
    sha, md5_h, size = hashlib.sha256(), hashlib.md5(usedforsecurity=False) if md5 else None, 0
    for chunk in chunks:
        sha.update(chunk)
        if md5_h is not None:
            md5_h.update(chunk)
        size += len(chunk)
    return Digests(sha.hexdigest(), md5_h.hexdigest() if md5_h is not None else "", size)


def hash_file(path: Path, chunk_size: int = CHUNK_SIZE) -> Digests:
    """Hash a file through the same HashingReader uploads use."""
    with open(path, "rb") as fh:
        reader = HashingReader(fh)
        while reader.read(chunk_size):
            pass
        return reader.digests()


class ChunkPipe:
    """A bounded, thread-safe byte pipe: an async request handler feeds chunks in, a worker thread
    reads them out as a file-like object (so storage backends stream without spooling the upload)."""

    _EOF = object()

    def __init__(self, max_chunks: int = 8) -> None:
        self._q: queue.Queue[object] = queue.Queue(maxsize=max_chunks)
        self._buf = b""
        self._eof = False
        self.closed = threading.Event()  # set by the reader when it stops consuming

    def feed(self, chunk: bytes, timeout: float = 0.25) -> bool:
        """Blocking put; returns False if the reader has stopped (don't feed more)."""
        while not self.closed.is_set():
            try:
                self._q.put(chunk, timeout=timeout)
                return True
            except queue.Full:
                continue
        return False

    def finish(self) -> None:
        """Signal EOF to the reader."""
        self._put_control(self._EOF)

    def abort(self, reason: str) -> None:
        """Make the reader raise UploadAborted."""
        self._put_control(UploadAborted(reason))

    def _put_control(self, item: object) -> None:
        while not self.closed.is_set():
            try:
                self._q.put(item, timeout=0.25)
                return
            except queue.Full:
                continue

    def read(self, n: int = -1, /) -> bytes:
        """File-like read used by the storage backend's thread."""
        parts = [self._buf] if self._buf else []
        have = len(self._buf)
        while not self._eof and (n < 0 or have < n):
            item = self._q.get()
            if item is self._EOF:
                self._eof = True
            elif isinstance(item, UploadAborted):
                self.closed.set()
                raise item
            else:
                assert isinstance(item, bytes)
                parts.append(item)
                have += len(item)
        if n >= 0 and have > n:  # split only the last part: one copy of the returned bytes
            last = parts.pop()
            cut = len(last) - (have - n)
            parts.append(last[:cut])
            self._buf = last[cut:]
        else:
            self._buf = b""
        return parts[0] if len(parts) == 1 else b"".join(parts)


def iter_verified(chunks: Iterator[bytes], expected_sha256: str) -> Iterator[bytes]:
    """Yield chunks while hashing; raise IntegrityError at the end if the hash differs.

    The last chunk is held back until the hash is confirmed, so a reader of changed bytes never receives
    the whole object (an HTTP response ends short of its Content-Length)."""
    sha = hashlib.sha256()
    held: bytes | None = None
    for chunk in chunks:
        sha.update(chunk)
        if held is not None:
            yield held
        held = chunk
    if sha.hexdigest() != expected_sha256:
        raise IntegrityError(f"sha256 {sha.hexdigest()} != expected {expected_sha256}")
    if held is not None:
        yield held


class IntegrityError(Exception):
    """Stored bytes do not match their recorded hash."""
