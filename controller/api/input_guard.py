"""Text no backend can store is refused at the boundary, before any write.

PostgreSQL text cannot hold NUL, and no UTF-8 column can hold a lone surrogate (which JSON's ``\\ud800``
escape can smuggle in); other C0 control characters are never meaningful in fedge's ids, names and
metadata. Such input used to reach the database (a 500 on PostgreSQL, and a chain transaction already sent
without its row). Now:

- ``InputGuard`` (ASGI middleware) checks the path, every query parameter and every JSON body
  (``application/json`` or ``+json``: decoded as strict UTF-8, every key and string value walked) and answers
  a 422 problem naming the field, or a 400 for a JSON body that is not UTF-8;
- ``forbidden_text`` is what the multipart form fields run too (:mod:`controller.api.uploads`).

Tab, newline and carriage return stay allowed (descriptions may span lines).
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

PROBLEM = "application/problem+json"
_FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
MAX_JSON_BODY = 16 * 1024 * 1024
"""JSON bodies larger than this are refused with a 413 (uploads are multipart or raw, never JSON)."""

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def describe(ch: str) -> str:
    if ch == "\x00":
        return "a NUL character"
    if "\ud800" <= ch <= "\udfff":
        return "a lone UTF-16 surrogate"
    return f"the control character U+{ord(ch):04X}"


def forbidden_text(value: Any, path: str) -> tuple[str, str] | None:
    """(field path, what is wrong) for the first key or string in ``value`` with a character no backend can
    store; None when all text is clean."""
    if isinstance(value, str):
        m = _FORBIDDEN.search(value)
        return (path, describe(m.group())) if m else None
    if isinstance(value, dict):
        for key, item in value.items():
            sub = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and (m := _FORBIDDEN.search(key)):
                return (sub, f"{describe(m.group())} in a key")
            found = forbidden_text(item, sub)
            if found:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = forbidden_text(item, f"{path}.{i}" if path else str(i))
            if found:
                return found
    return None


def _problem(status: int, title: str, detail: str, instance: str, field: str | None) -> tuple[int, bytes]:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
        "instance": instance,
    }
    if field is not None:
        body["field"] = field
        body["errors"] = [{"field": field, "message": detail}]
    return status, json.dumps(body).encode()


def _is_json(scope: Scope) -> bool:
    for name, value in scope.get("headers", []):
        if name == b"content-type":
            media = value.split(b";", 1)[0].strip().lower()
            return bool(media == b"application/json" or media.endswith(b"+json"))
    return False


class InputGuard:
    """ASGI middleware: refuse unstorable text in the path, the query and JSON bodies (see module doc)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        refused = self._check_url(scope, path)
        replay: list[Message] | None = None
        if refused is None and _is_json(scope):
            refused, replay = await self._check_json(receive, path)
        if refused is not None:
            status, body = refused
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [
                        (b"content-type", PROBLEM.encode()),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        if replay is not None:
            pending = list(replay)

            async def replayed() -> Message:
                return pending.pop(0) if pending else await receive()

            await self.app(scope, replayed, send)
            return
        await self.app(scope, receive, send)

    @staticmethod
    def _check_url(scope: Scope, path: str) -> tuple[int, bytes] | None:
        if m := _FORBIDDEN.search(path):
            return _problem(
                422, "Unprocessable content", f"the path contains {describe(m.group())}", path, "path"
            )
        raw = scope.get("query_string", b"")
        if not raw:
            return None
        try:
            text = raw.decode("ascii")
            pairs = parse_qsl(text, keep_blank_values=True, errors="strict")
        except (UnicodeDecodeError, ValueError):
            return _problem(400, "Bad request", "the query string is not valid UTF-8", path, "query")
        for key, value in pairs:
            for part in (key, value):
                if m := _FORBIDDEN.search(part):
                    field = f"query.{key}"
                    return _problem(
                        422, "Unprocessable content", f"{field} contains {describe(m.group())}", path, field
                    )
        return None

    @staticmethod
    async def _check_json(receive: Receive, path: str) -> tuple[tuple[int, bytes] | None, list[Message]]:
        messages: list[Message] = []
        body = bytearray()
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                return None, messages  # the client left: let the app see it
            body += message.get("body", b"")
            if len(body) > MAX_JSON_BODY:
                return _problem(
                    413, "Payload too large", f"JSON body exceeds {MAX_JSON_BODY} bytes", path, "body"
                ), []
            if not message.get("more_body", False):
                break
        whole: list[Message] = [{"type": "http.request", "body": bytes(body), "more_body": False}]
        if not body.strip():
            return None, whole
        try:
            text = bytes(body).decode("utf-8")
        except UnicodeDecodeError as exc:
            detail = f"the JSON body is not UTF-8 (byte {exc.start}: 0x{body[exc.start]:02x})"
            return _problem(400, "Bad request", detail, path, "body"), []
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):
            return None, whole  # not JSON: FastAPI's own validation answers with the parse error
        found = forbidden_text(value, "body")
        if found:
            field, what = found
            return _problem(422, "Unprocessable content", f"{field} contains {what}", path, field), []
        return None, whole
