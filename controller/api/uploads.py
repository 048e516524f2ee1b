"""HTTP upload bodies as the registry's parts: a multipart/form-data body parsed as it arrives (fields
decoded, JSON fields validated the moment they are whole), or a raw body as one file part. The registry
(:mod:`controller.registry.intake`) streams the file part into the store; nothing here stores a byte."""

from __future__ import annotations

import json
from collections import deque
from collections.abc import AsyncIterator
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from controller.api.input_guard import forbidden_text
from controller.errors import BadRequest, PayloadTooLarge, Unprocessable, UnsupportedMediaType
from controller.registry.upload import FieldPart, FilePart, UploadForm, UploadLimits, UploadPart

M = TypeVar("M", bound=BaseModel)

_FIELD_SLACK = 64 * 1024
"""Bytes a multipart body may carry beyond its file and fields (boundaries, part headers)."""


def parse_json_field(raw: str | None, schema: type[M], field: str) -> M:
    """Validate a JSON form field; 422 names the field (and the nested path) that is wrong."""
    if raw is None:
        raise Unprocessable(f"missing form field '{field}'", field=field)
    try:
        found = forbidden_text(json.loads(raw), field)
    except (ValueError, RecursionError):
        found = None  # not JSON: pydantic names the parse error below
    if found:
        path, what = found
        raise Unprocessable(f"{path} contains {what}", field=path, errors=[{"field": path, "message": what}])
    try:
        return schema.model_validate_json(raw)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False)
        if errors and errors[0]["type"] == "json_invalid":
            raise Unprocessable(f"'{field}' is not valid JSON: {errors[0]['msg']}", field=field) from exc
        first = errors[0]
        path = ".".join(str(p) for p in (field, *first["loc"]))
        raise Unprocessable(
            f"invalid {path}: {first['msg']}",
            field=path,
            errors=[
                {"field": ".".join(str(p) for p in (field, *e["loc"])), "message": e["msg"]} for e in errors
            ],
        ) from exc


def is_multipart(request: Request) -> bool:
    return request.headers.get("content-type", "").startswith("multipart/form-data")


def multipart_parts(request: Request, form: UploadForm, limits: UploadLimits) -> AsyncIterator[UploadPart]:
    """The parts of a multipart/form-data body, read as they arrive. 415 for another type, 400 for a
    body without a boundary and 413 for a declared length past the limits: before anything is read."""
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data":
        raise UnsupportedMediaType("expected multipart/form-data")
    boundary = params.get(b"boundary")
    if not boundary:
        raise BadRequest("multipart body without a boundary")
    _check_declared_length(request, limits.file_bytes, limits.field_bytes * 4 + _FIELD_SLACK)
    return _MultipartParts(request.stream(), boundary, form, limits.field_bytes)


def body_part(request: Request, form: UploadForm, limits: UploadLimits) -> AsyncIterator[UploadPart]:
    """A raw request body as the form's one file part (its ``Content-Type`` kept as the artifact's)."""
    _check_declared_length(request, limits.file_bytes, 0)
    part = FilePart(
        name=form.file,
        filename=None,
        content_type=request.headers.get("content-type", "application/octet-stream"),
        chunks=request.stream(),
    )
    return _OnePart(part)


def _check_declared_length(request: Request, limit: int, slack: int) -> None:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + slack:
        raise PayloadTooLarge(f"upload of {declared} bytes exceeds the limit of {limit} bytes", limit=limit)


class _OnePart:
    def __init__(self, part: UploadPart) -> None:
        self._part: UploadPart | None = part

    def __aiter__(self) -> _OnePart:
        return self

    async def __anext__(self) -> UploadPart:
        part, self._part = self._part, None
        if part is None:
            raise StopAsyncIteration
        return part


class _MultipartParts:
    """python-multipart's callbacks turned into parts: a field once it is whole, a file part as soon as
    its headers are in (its bytes follow through :class:`_FileChunks`)."""

    def __init__(
        self, stream: AsyncIterator[bytes], boundary: bytes, form: UploadForm, max_field: int
    ) -> None:
        self._stream = stream
        self._form = form
        self._max_field = max_field
        self._events: deque[tuple[str, bytes]] = deque()
        self._header = (bytearray(), bytearray())
        self._ended = False
        self._file: _FileChunks | None = None
        self._parser = MultipartParser(boundary, self._callbacks())  # type: ignore[arg-type]

    def __aiter__(self) -> _MultipartParts:
        return self

    async def __anext__(self) -> UploadPart:
        if self._file is not None:  # the reader moved on without reading the file part to its end
            async for _ in self._file:
                pass
        event = await self._next_event()
        while event is not None and event[0] != "begin":
            event = await self._next_event()
        if event is None:
            raise StopAsyncIteration
        headers: dict[str, str] = {}
        event = await self._next_event()
        while event is not None and event[0] == "header":
            key, _, raw = event[1].partition(b"\x00")
            headers[key.decode("latin-1").lower()] = raw.decode("latin-1")
            event = await self._next_event()
        if event is None:
            raise StopAsyncIteration  # the body ended inside a part's headers
        _, disp = parse_options_header(headers.get("content-disposition", ""))
        name = disp.get(b"name", b"").decode("utf-8", "replace")
        raw_filename = disp.get(b"filename")
        filename = raw_filename.decode("utf-8", "replace") if raw_filename is not None else None
        if name == self._form.file or filename is not None:
            self._file = _FileChunks(self)
            return FilePart(name, filename, headers.get("content-type"), self._file)
        value = await self._field(name)
        if value is None:
            raise StopAsyncIteration
        return FieldPart(name, value)

    async def _field(self, name: str) -> str | BaseModel | None:
        text = bytearray()
        while (event := await self._next_event()) is not None and event[0] == "data":
            text += event[1]
            if len(text) > self._max_field:
                raise PayloadTooLarge(f"form field '{name}' exceeds {self._max_field} bytes", field=name)
        if event is None:
            return None  # the body ended inside the field: it never arrived
        try:
            value = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise Unprocessable(f"form field '{name}' is not UTF-8", field=name) from exc
        schema = self._form.json.get(name)
        if schema is not None:
            return parse_json_field(value, schema, name)
        found = forbidden_text(value, name)
        if found:
            raise Unprocessable(f"form field '{name}' contains {found[1]}", field=name)
        return value

    async def _next_event(self) -> tuple[str, bytes] | None:
        """The next parser event, reading the body as needed; None once the body has ended."""
        while not self._events:
            if self._ended:
                return None
            try:
                chunk = await anext(self._stream)
            except StopAsyncIteration:
                self._ended = True
                self._parser.finalize()
                continue
            if chunk:
                try:
                    self._parser.write(chunk)
                except MultipartParseError as exc:
                    raise BadRequest(f"malformed multipart body: {exc}") from exc
        return self._events.popleft()

    def _callbacks(self) -> dict[str, object]:
        events, (field, value) = self._events, self._header

        def on_part_begin() -> None:
            events.append(("begin", b""))

        def on_header_field(data: bytes, start: int, end: int) -> None:
            field.extend(data[start:end])

        def on_header_value(data: bytes, start: int, end: int) -> None:
            value.extend(data[start:end])

        def on_header_end() -> None:
            events.append(("header", bytes(field) + b"\x00" + bytes(value)))
            field.clear()
            value.clear()

        def on_headers_finished() -> None:
            events.append(("headers_done", b""))

        def on_part_data(data: bytes, start: int, end: int) -> None:
            events.append(("data", data[start:end]))

        def on_part_end() -> None:
            events.append(("end", b""))

        return {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        }


class _FileChunks:
    """The bytes of the current file part; 400 if the body ends inside it."""

    def __init__(self, parts: _MultipartParts) -> None:
        self._parts = parts
        self._done = False

    def __aiter__(self) -> _FileChunks:
        return self

    async def __anext__(self) -> bytes:
        if self._done:
            raise StopAsyncIteration
        event = await self._parts._next_event()
        if event is None:
            raise BadRequest("multipart body ended inside the file part")
        if event[0] != "data":  # "end"
            self._done = True
            self._parts._file = None
            raise StopAsyncIteration
        return event[1]


__all__ = ["body_part", "is_multipart", "multipart_parts", "parse_json_field"]
