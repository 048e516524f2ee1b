"""Shared fixtures: a controller per test on each backend combination, live servers for SDK/CLI tests."""

from __future__ import annotations

import os

# Every process the tests start stays on this machine, under a bare `pytest` too (the Makefile and .ci/run
# export the same): no flwr telemetry or update check, no Ray usage stats, Ray on 127.0.0.1, no Evidently
# telemetry.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import subprocess
import sys
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
from controller.chain.base import ChainBackend
from controller.chain.factory import make_chain_backend
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


def _open(settings: ControllerSettings, chain: ChainBackend | None = None) -> Iterator[Api]:
    state = build_state(settings, chain)
    with TestClient(create_app(state)) as client:
        yield Api(state, client, settings)
    state.close()


@pytest.fixture(scope="session")
def shared_evm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChainBackend]:
    """One in-process EVM for the API tests (records are keyed by fresh UUIDs, so tests don't collide;
    creating a chain costs ~2 s). Restart and journal tests build their own."""
    chain = make_chain_backend("evm", tmp_path_factory.mktemp("shared-evm"))
    yield chain
    chain.close()


@pytest.fixture(scope="session")
def shared_anvil(anvil_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChainBackend]:
    """The controller's chain on a real JSON-RPC node (anvil)."""
    chain = make_chain_backend("jsonrpc", tmp_path_factory.mktemp("anvil-chain"), rpc_url=anvil_url)
    yield chain
    chain.close()


@pytest.fixture
def api(make_settings: SettingsFactory, shared_evm: ChainBackend) -> Iterator[Api]:
    """Controller on embedded defaults (SQLite + local filesystem + in-process EVM)."""
    yield from _open(make_settings(), shared_evm)


@pytest.fixture(params=["sqlite+local", "postgres+s3"])
def any_api(request: pytest.FixtureRequest, make_settings: SettingsFactory) -> Iterator[Api]:
    """The same tests on embedded defaults and on real PostgreSQL + real S3 (SeaweedFS) + anvil."""
    if request.param == "sqlite+local":
        yield from _open(make_settings(), request.getfixturevalue("shared_evm"))
        return
    pg_url: str = request.getfixturevalue("postgres_db_url")
    s3 = request.getfixturevalue("s3_server")

    yield from _open(
        make_settings(
            database_url=pg_url,
            **s3.controller_settings(),
        ),
        request.getfixturevalue("shared_anvil"),
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


def fedge_cli(
    live: LiveServer, *args: str, token: str = ADMIN_TOKEN, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the ``fedge`` user CLI in a subprocess against a live controller (wide output, no colour)."""
    env = {**os.environ, "FEDGE_URL": live.url, "FEDGE_TOKEN": token, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "controller.user_cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def live(make_settings: SettingsFactory, shared_evm: ChainBackend) -> Iterator[LiveServer]:
    """A real HTTP controller on loopback (embedded defaults)."""
    state = build_state(make_settings(), shared_evm)
    with LiveServer(state) as server:
        yield server
    state.close()
