"""Streaming uploads: an upload arrives as parts (small fields, one file part whose bytes come as an
async stream); the file's bytes go straight into the ArtifactStore through a HashingReader, in a worker
thread, while the async side keeps reading. Nothing is spooled to disk first, the size limit is enforced
as bytes arrive, and a failure at any point leaves no object behind.

Where the parts come from (an HTTP multipart body, a raw request body) is the API's business
(:mod:`controller.api.uploads`); this module never sees a request."""

from __future__ import annotations

import asyncio
import contextlib
import queue
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from pydantic import BaseModel

from controller.errors import PayloadTooLarge, ServiceUnavailable
from controller.registry.hashing import ChunkPipe, Digests, HashingReader, SizeLimitExceeded, UploadAborted
from controller.storage.base import ArtifactStore, StorageError

_EXECUTOR = ThreadPoolExecutor(max_workers=64, thread_name_prefix="fedge-upload")
_COALESCE = 1024 * 1024


@dataclass(frozen=True)
class StoredUpload:
    """An upload that reached the store: original name/type (kept in SQL only) and its digests."""

    filename: str | None
    content_type: str | None
    digests: Digests


@dataclass(frozen=True)
class UploadLimits:
    """How large an upload may be: its file part, and each small field."""

    file_bytes: int
    field_bytes: int


@dataclass(frozen=True)
class UploadForm:
    """The parts an upload accepts: one file part named ``file`` (streamed into the store) and small
    fields; a field named in ``json`` is JSON validated against its schema as soon as it has arrived,
    before any later part is read."""

    file: str
    json: Mapping[str, type[BaseModel]] = field(default_factory=dict)


@dataclass(frozen=True)
class FieldPart:
    """A small field, whole: text, or the validated model of a JSON field the form names."""

    name: str
    value: str | BaseModel


@dataclass(frozen=True)
class FilePart:
    """A file part: its bytes arrive through ``chunks``, which must be read to its end (or abandoned by
    raising) before the next part is asked for."""

    name: str
    filename: str | None
    content_type: str | None
    chunks: AsyncIterator[bytes]


UploadPart = FieldPart | FilePart


@dataclass(frozen=True)
class UploadTarget:
    """Where an upload goes and how large it may be."""

    store: ArtifactStore
    bucket: str
    key: str
    limit: int


class _StoreWriter:
    """Runs ``store.put`` in a worker thread, reading from a ChunkPipe."""

    def __init__(self, target: UploadTarget, content_type: str) -> None:
        self.pipe = ChunkPipe()
        self.reader = HashingReader(self.pipe, target.limit)
        self._pending: list[bytes] = []
        self._pending_size = 0
        self.target = target
        loop = asyncio.get_running_loop()
        self.future = loop.run_in_executor(_EXECUTOR, self._run, content_type)

    def _run(self, content_type: str) -> int:
        try:
            return self.target.store.put(self.target.bucket, self.target.key, self.reader, content_type)
        finally:
            self.pipe.closed.set()

    async def feed(self, data: bytes) -> bool:
        """Hand bytes to the worker (coalesced to ~1 MiB to cut thread wake-ups); False once the worker
        has stopped (limit, storage error)."""
        self._pending.append(data)
        self._pending_size += len(data)
        if self._pending_size < _COALESCE:
            return not self.pipe.closed.is_set()
        return await self._flush()

    async def _flush(self) -> bool:
        if not self._pending:
            return not self.pipe.closed.is_set()
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending, self._pending_size = [], 0
        try:
            self.pipe._q.put_nowait(data)
            return not self.pipe.closed.is_set()
        except queue.Full:  # wait in a thread instead of blocking the event loop
            return await asyncio.get_running_loop().run_in_executor(_EXECUTOR, self.pipe.feed, data)

    async def finish(self) -> Digests:
        if not await self._flush():
            await self._wait()
        await asyncio.get_running_loop().run_in_executor(_EXECUTOR, self.pipe.finish)
        await self._wait()
        return self.reader.digests()

    async def abort(self, reason: str) -> None:
        await asyncio.get_running_loop().run_in_executor(_EXECUTOR, self.pipe.abort, reason)
        with contextlib.suppress(BaseException):  # the abort is the error we report
            await self.future

    async def _wait(self) -> None:
        try:
            await self.future
        except SizeLimitExceeded as exc:
            raise PayloadTooLarge(f"upload exceeds the limit of {exc.limit} bytes", limit=exc.limit) from exc
        except StorageError as exc:
            raise ServiceUnavailable(f"artifact store failed: {exc}", backend="storage") from exc


async def store_part(part: FilePart, target: UploadTarget) -> StoredUpload:
    """Stream a file part into ``target`` while hashing it. 413 past the limit, 503 when the store fails;
    on any failure (including the part's stream raising) the store keeps nothing."""
    writer = _StoreWriter(target, part.content_type or "application/octet-stream")
    try:
        async for data in part.chunks:
            if data and not await writer.feed(data):
                await writer._wait()  # raises the worker's error (limit, storage)
                raise PayloadTooLarge("upload stopped")
    except BaseException as exc:
        await writer.abort(f"upload interrupted: {type(exc).__name__}")
        raise
    digests = await writer.finish()
    return StoredUpload(part.filename, part.content_type, digests)


__all__ = [
    "FieldPart",
    "FilePart",
    "StoredUpload",
    "UploadAborted",
    "UploadForm",
    "UploadLimits",
    "UploadPart",
    "UploadTarget",
    "store_part",
]
