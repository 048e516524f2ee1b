"""Streamed downloads with integrity headers (ETag = SHA-256, RFC 3230 Digest) and conditional GET."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from urllib.parse import quote

from fastapi import Request, Response
from fastapi.responses import StreamingResponse


def artifact_response(
    request: Request,
    chunks_factory: object,
    *,
    sha256: str,
    md5: str | None,
    size: int | None,
    filename: str | None,
    content_type: str | None,
    extra_headers: dict[str, str] | None = None,
    redirect: Callable[[], str | None] | None = None,
) -> Response:
    """304 when ``If-None-Match`` matches; else a 307 to ``redirect()`` when it gives a URL (a presigned
    storage URL: the bytes do not pass through the controller), else the object streamed; the hashes
    are in the headers of each."""
    etag = f'"{sha256}"'
    headers = {
        "ETag": etag,
        "Digest": "sha-256=" + base64.b64encode(bytes.fromhex(sha256)).decode(),
        "Repr-Digest": "sha-256=:" + base64.b64encode(bytes.fromhex(sha256)).decode() + ":",
        "X-Content-SHA256": sha256,
        "Cache-Control": "private, no-cache",
    }
    if md5:
        headers["Content-MD5"] = base64.b64encode(bytes.fromhex(md5)).decode()
    if extra_headers:
        headers.update(extra_headers)
    inm = request.headers.get("if-none-match")
    if inm and (inm.strip() == "*" or etag in [t.strip() for t in inm.split(",")]):
        return Response(status_code=304, headers=headers)
    location = redirect() if redirect is not None else None
    if location:
        headers["Location"] = location
        headers["Cache-Control"] = "no-store"  # the URL expires
        return Response(status_code=307, headers=headers)
    if size is not None:
        headers["Content-Length"] = str(size)
    if filename:
        ascii_name = filename.encode("ascii", "replace").decode().replace("?", "_")
        headers["Content-Disposition"] = (
            f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename)}"
        )
    assert callable(chunks_factory)
    chunks: Iterator[bytes] = chunks_factory()
    return StreamingResponse(chunks, media_type=content_type or "application/octet-stream", headers=headers)
