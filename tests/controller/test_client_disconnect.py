"""A client that hangs up mid-upload is one INFO line, not an unhandled error with a traceback, and leaves
nothing stored."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest

from controller.app import create_app
from tests.conftest import ADMIN_TOKEN, Api


def _drive(app: Any, body: bytes, boundary: str) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": body, "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        return {"type": "http.disconnect"}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/datasets",
        "raw_path": b"/v1/datasets",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"testserver"),
            (b"authorization", f"Bearer {ADMIN_TOKEN}".encode()),
            (b"content-type", f"multipart/form-data; boundary={boundary}".encode()),
            (b"content-length", str(len(body) + 500_000).encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
        "state": {},
    }
    asyncio.run(app(scope, receive, send))
    return sent


def test_disconnect_mid_upload_is_one_info_line_and_stores_nothing(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    boundary = "fedgeBOUNDARY"
    meta = json.dumps({"organization_id": "org-1", "samples_dimension": "(1,8,8)"})
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="metadata"\r\n\r\n{meta}\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="dataset"; filename="d.npz"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode() + b"\x01" * 200_000
    app = create_app(api.state)
    with caplog.at_level(logging.INFO):
        sent = _drive(app, body, boundary)
    assert sent and sent[0]["status"] == 499
    ours = [r for r in caplog.records if r.name.startswith("fedge")]
    assert not [r for r in ours if r.levelno >= logging.WARNING], [r.getMessage() for r in ours]
    left = [r for r in ours if "client disconnected" in r.getMessage()]
    assert len(left) == 1 and left[0].levelno == logging.INFO and left[0].exc_info is None
    assert list(api.state.store.list(api.state.registry.buckets.datasets)) == []
    assert api.client.get("/v1/datasets", headers=api.admin).json()["total"] == 0
