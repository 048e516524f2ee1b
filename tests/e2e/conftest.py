"""One live controller per module (fleet tests use fresh devices and models, so they don't collide)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from controller.chain.base import ChainBackend
from controller.config import ControllerSettings
from controller.state import ControllerState, build_state
from tests.conftest import ADMIN_TOKEN, LiveServer


@pytest.fixture(scope="module")
def controller(
    tmp_path_factory: pytest.TempPathFactory, shared_evm: ChainBackend
) -> Iterator[tuple[LiveServer, ControllerState]]:
    settings = ControllerSettings(
        data_dir=tmp_path_factory.mktemp("fleet-controller"),
        admin_token=ADMIN_TOKEN,
        _env_file=None,  # type: ignore[call-arg]
    )
    state = build_state(settings, shared_evm, start_jobs=False)
    with LiveServer(state) as server:
        yield server, state
    state.close()


@pytest.fixture(scope="module")
def http(controller: tuple[LiveServer, ControllerState]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=controller[0].url, timeout=30) as client:
        yield client
