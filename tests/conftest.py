"""Shared fixtures: a controller per test on each backend combination, live servers for SDK/CLI tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from controller.app import create_app
from controller.config import ControllerSettings
from controller.state import ControllerState, build_state

pytest_plugins = ["tests.fixtures.services"]

ADMIN_TOKEN = "fedge_test-admin-token-0123456789abcdef"


@dataclass
class Api:
    """A controller under test: its state, an authenticated client and helpers."""

    state: ControllerState
    client: TestClient
    settings: ControllerSettings

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    def token(self, role: str, **kw: Any) -> dict[str, str]:
        r = self.client.post("/v1/tokens", headers=self.admin, json={"name": f"t-{role}", "role": role, **kw})
        assert r.status_code == 201, r.text
        return {"Authorization": f"Bearer {r.json()['token']}"}

    def push_dataset(
        self, data: bytes = b"x" * 1000, meta: dict[str, Any] | None = None, **kw: Any
    ) -> httpx.Response:
        import json

        meta = meta if meta is not None else {"organization_id": "org-1", "samples_dimension": "(1,8,8)"}
        headers = kw.pop("headers", self.admin)
        return self.client.post(
            "/v1/datasets",
            headers=headers,
            files={"dataset": (kw.pop("filename", "d.npz"), data, "application/octet-stream")},
            data={"metadata": json.dumps(meta)},
        )

    def register_model(self, dataset_id: str, **extra: Any) -> httpx.Response:
        body = {
            "model_params": {"developer_id": "dev-1", "organization_id": "org-1"},
            "data_params": {"dataset_id": dataset_id},
            **extra,
        }
        return self.client.post("/v1/models", headers=self.admin, json=body)


SettingsFactory = Callable[..., ControllerSettings]


@pytest.fixture
def make_settings(tmp_path: Path) -> SettingsFactory:
    """Settings on embedded defaults in a fresh data dir (overridable)."""

    def make(**overrides: Any) -> ControllerSettings:
        base: dict[str, Any] = {
            "data_dir": tmp_path / "data",
            "admin_token": ADMIN_TOKEN,
            "pending_grace_seconds": 3600,
            "_env_file": None,
        }
        base.update(overrides)
        return ControllerSettings(**base)

    return make


def _open(settings: ControllerSettings) -> Iterator[Api]:
    state = build_state(settings)
    with TestClient(create_app(state)) as client:
        yield Api(state, client, settings)
    state.close()


@pytest.fixture
def api(make_settings: SettingsFactory) -> Iterator[Api]:
    """Controller on embedded defaults (SQLite + local filesystem)."""
    yield from _open(make_settings())


@pytest.fixture(params=["sqlite+local", "postgres+s3"])
def any_api(request: pytest.FixtureRequest, make_settings: SettingsFactory) -> Iterator[Api]:
    """The same tests on embedded defaults and on real PostgreSQL + real S3 (SeaweedFS)."""
    if request.param == "sqlite+local":
        yield from _open(make_settings())
        return
    pg_url: str = request.getfixturevalue("postgres_db_url")
    s3 = request.getfixturevalue("s3_server")
    import uuid

    yield from _open(
        make_settings(
            database_url=pg_url,
            storage_backend="s3",
            s3_endpoint=s3.endpoint,
            s3_access_key=s3.access_key,
            s3_secret_key=s3.secret_key,
            s3_secure=False,
            bucket_prefix=f"t{uuid.uuid4().hex[:10]}-",
        )
    )


class LiveServer:
    """uvicorn serving a built state in a background thread on a free port."""

    def __init__(self, state: ControllerState) -> None:
        import uvicorn

        from tests.fixtures.services import free_port

        self.state = state
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(create_app(state), host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("live server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def live(make_settings: SettingsFactory) -> Iterator[LiveServer]:
    """A real HTTP controller on loopback (embedded defaults)."""
    state = build_state(make_settings())
    with LiveServer(state) as server:
        yield server
    state.close()
