"""Streaming uploads: request bytes go straight into the ArtifactStore through a HashingReader, in a
worker thread, while the async handler keeps reading the socket. Nothing is spooled to disk first, the
size limit is enforced as bytes arrive, and a failure at any point leaves no object behind."""

from __future__ import annotations

import asyncio
import contextlib
import queue
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from controller.errors import (
    BadRequest,
    PayloadTooLarge,
    ServiceUnavailable,
    Unprocessable,
    UnsupportedMediaType,
)
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


def _check_declared_length(request: Request, limit: int, slack: int) -> None:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + slack:
        raise PayloadTooLarge(f"upload of {declared} bytes exceeds the limit of {limit} bytes", limit=limit)


async def receive_body(request: Request, target: UploadTarget) -> StoredUpload:
    """Store a raw request body (``Content-Type`` kept as the artifact's type)."""
    _check_declared_length(request, target.limit, 0)
    content_type = request.headers.get("content-type", "application/octet-stream")
    writer = _StoreWriter(target, content_type)
    try:
        async for chunk in request.stream():
            if chunk and not await writer.feed(chunk):
                break
    except ClientDisconnect:
        await writer.abort("client disconnected")
        raise
    except BaseException:
        await writer.abort("upload interrupted")
        raise
    digests = await writer.finish()
    return StoredUpload(filename=None, content_type=content_type, digests=digests)


@dataclass
class _Part:
    headers: dict[str, str] = field(default_factory=dict)
    name: str = ""
    filename: str | None = None
    content_type: str | None = None
    text: bytearray = field(default_factory=bytearray)
    writer: _StoreWriter | None = None


class _Events:
    """Collects python-multipart callbacks so the async side can act on them between socket reads."""

    def __init__(self) -> None:
        self.items: list[tuple[str, bytes]] = []
        self._field = bytearray()
        self._value = bytearray()

    def callbacks(self) -> dict[str, object]:
        def on_part_begin() -> None:
            self.items.append(("begin", b""))

        def on_header_field(data: bytes, start: int, end: int) -> None:
            self._field += data[start:end]

        def on_header_value(data: bytes, start: int, end: int) -> None:
            self._value += data[start:end]

        def on_header_end() -> None:
            self.items.append(("header", bytes(self._field) + b"\x00" + bytes(self._value)))
            self._field.clear()
            self._value.clear()

        def on_headers_finished() -> None:
            self.items.append(("headers_done", b""))

        def on_part_data(data: bytes, start: int, end: int) -> None:
            self.items.append(("data", data[start:end]))

        def on_part_end() -> None:
            self.items.append(("end", b""))

        return {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        }


async def receive_multipart(
    request: Request,
    *,
    file_field: str | None,
    target: UploadTarget | None,
    max_field_bytes: int,
) -> tuple[dict[str, str], StoredUpload | None]:
    """Parse a multipart/form-data body as it arrives. The part named ``file_field`` is streamed into
    ``target``; other parts must be small text fields. Returns (text fields, stored file or None)."""
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data":
        raise UnsupportedMediaType("expected multipart/form-data")
    boundary = params.get(b"boundary")
    if not boundary:
        raise BadRequest("multipart body without a boundary")
    if target is not None:
        _check_declared_length(request, target.limit, max_field_bytes * 4 + 64 * 1024)

    events = _Events()
    parser = MultipartParser(boundary, events.callbacks())  # type: ignore[arg-type]
    fields: dict[str, str] = {}
    stored: StoredUpload | None = None
    part = _Part()
    active: list[_StoreWriter] = []

    async def handle(kind: str, data: bytes) -> None:
        nonlocal part, stored
        if kind == "begin":
            part = _Part()
        elif kind == "header":
            name, _, value = data.partition(b"\x00")
            part.headers[name.decode("latin-1").lower()] = value.decode("latin-1")
        elif kind == "headers_done":
            _, disp = parse_options_header(part.headers.get("content-disposition", ""))
            part.name = disp.get(b"name", b"").decode("utf-8", "replace")
            raw_filename = disp.get(b"filename")
            part.filename = raw_filename.decode("utf-8", "replace") if raw_filename is not None else None
            part.content_type = part.headers.get("content-type")
            if file_field is not None and part.name == file_field:
                if stored is not None or active:
                    raise Unprocessable(f"more than one '{file_field}' part", field=file_field)
                assert target is not None
                part.writer = _StoreWriter(target, part.content_type or "application/octet-stream")
                active.append(part.writer)
            elif part.filename is not None:
                raise Unprocessable(f"unexpected file part '{part.name}'", field=part.name)
        elif kind == "data":
            if part.writer is not None:
                if not await part.writer.feed(data):
                    await part.writer._wait()  # raises the worker's error (limit, storage)
                    raise PayloadTooLarge("upload stopped")
            else:
                part.text += data
                if len(part.text) > max_field_bytes:
                    raise PayloadTooLarge(
                        f"form field '{part.name}' exceeds {max_field_bytes} bytes", field=part.name
                    )
        elif kind == "end":
            if part.writer is not None:
                digests = await part.writer.finish()
                active.clear()
                stored = StoredUpload(part.filename, part.content_type, digests)
            else:
                try:
                    fields[part.name] = part.text.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise Unprocessable(f"form field '{part.name}' is not UTF-8", field=part.name) from exc

    try:
        async for chunk in request.stream():
            if not chunk:
                continue
            try:
                parser.write(chunk)
            except MultipartParseError as exc:
                raise BadRequest(f"malformed multipart body: {exc}") from exc
            items, events.items = events.items, []
            for kind, data in items:
                await handle(kind, data)
        parser.finalize()
    except BaseException as exc:
        for writer in active:
            await writer.abort(f"upload interrupted: {type(exc).__name__}")
        if stored is not None and target is not None:
            target.store.delete(target.bucket, target.key)
        raise
    if active:
        for writer in active:
            await writer.abort("multipart body ended inside the file part")
        raise BadRequest("multipart body ended inside the file part")
    return fields, stored


__all__ = ["StoredUpload", "UploadAborted", "UploadTarget", "receive_body", "receive_multipart"]
