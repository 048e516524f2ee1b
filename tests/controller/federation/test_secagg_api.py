"""``privacy.secure_aggregation`` through the FL jobs API (no runtime): a valid job is queued with its
settings resolved against the devices; each combination that cannot work is a 422 problem naming its
field, and nothing is queued; the engine passes the settings to the ServerApp in the run config."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from controller.app import create_app
from controller.chain.base import ChainBackend
from controller.config import ControllerSettings
from controller.state import ControllerState, build_state
from tests.conftest import ADMIN_TOKEN
from tests.controller.federation.fl_helpers import (
    ADMIN,
    enroll_direct,
    job_body,
    problem,
    register_digits_model,
)


@dataclass
class Ctl:
    state: ControllerState
    client: TestClient
    model_id: str
    devices: list[str]

    def submit(self, **extra: Any) -> Any:
        return self.client.post(
            "/v1/fl/jobs", headers=ADMIN, json=job_body(self.model_id, self.devices, **extra)
        )

    def jobs(self) -> int:
        return int(self.client.get("/v1/fl/jobs", headers=ADMIN).json()["total"])


@pytest.fixture
def ctl(tmp_path: Path, shared_evm: ChainBackend) -> Iterator[Ctl]:
    """A controller that only queues FL jobs (no workers, no SuperLink), four enrolled devices."""
    settings = ControllerSettings(data_dir=tmp_path / "data", admin_token=ADMIN_TOKEN, _env_file=None)
    state = build_state(settings, shared_evm, start_jobs=False)
    with TestClient(create_app(state)) as client:
        _, model_id = register_digits_model(client)
        devices = [enroll_direct(state, site="lab") for _ in range(4)]
        yield Ctl(state, client, model_id, devices)
    state.close()


def test_a_secagg_job_is_queued_with_its_settings_resolved(ctl: Ctl) -> None:
    secagg = {"reconstruction_threshold": 3, "clipping_range": 4.0}
    r = ctl.submit(min_clients=4, privacy={"secure_aggregation": secagg, "dp": {"epsilon": 5.0}})
    assert r.status_code == 202, r.text
    job = ctl.client.get(f"/v1/fl/jobs/{r.json()['job_id']}", headers=ADMIN).json()
    assert job["privacy"]["secure_aggregation"] == {
        "num_shares": 4,  # min_clients
        "reconstruction_threshold": 3,
        "clipping_range": 4.0,
        "quantization_range": 2**22,
        "max_weight": 1000.0,
    }
    assert job["privacy"]["dp"]["epsilon"] == 5.0  # local DP composes (DP-SGD, then masking)


@pytest.mark.parametrize(
    ("extra", "field", "words"),
    [
        ({"min_clients": 2}, "min_clients", "at least 3 devices per round"),
        (
            {"min_clients": 3, "secure_aggregation": {"num_shares": 4}},
            "privacy.secure_aggregation.num_shares",
            "between 3 and min_clients (3)",
        ),
        ({"min_clients": 4, "strategy": {"name": "krum"}}, "strategy.name", "needs each device's update"),
        (
            {"min_clients": 4, "central_dp": {"noise_multiplier": 0.5, "clipping_norm": 1.0}},
            "privacy.central_dp",
            "clips each update on the server",
        ),
        (
            {"min_clients": 4, "secure_aggregation": {"quantization_range": 2**30}},
            "privacy.secure_aggregation.quantization_range",
            "below 2**32",
        ),
    ],
)
def test_a_combination_that_cannot_work_is_a_422_naming_its_field(
    ctl: Ctl, extra: dict[str, Any], field: str, words: str
) -> None:
    privacy: dict[str, Any] = {"secure_aggregation": extra.pop("secure_aggregation", {})}
    if "central_dp" in extra:
        privacy["central_dp"] = extra.pop("central_dp")
    r = ctl.submit(privacy=privacy, **extra)
    p = problem(r)
    assert p.status == 422 and p.field == field and words in p.detail, p.body
    assert ctl.jobs() == 0


@pytest.mark.parametrize(
    "secagg",
    [
        {"num_shares": 4, "reconstruction_threshold": 4},
        {"num_shares": 4, "reconstruction_threshold": 2},
        {"num_shares": 2},
        {"max_weight": 0},
        {"clipping_range": -1.0},
        {"quantization_range": 2**32},
        {"shares": 3},
    ],
)
def test_a_malformed_setting_is_a_422(ctl: Ctl, secagg: dict[str, Any]) -> None:
    r = ctl.submit(min_clients=4, privacy={"secure_aggregation": secagg})
    assert problem(r).status == 422
    assert ctl.jobs() == 0


def test_the_engine_hands_the_settings_to_the_serverapp_in_the_run_config(tmp_path: Path) -> None:
    from controller.federation.base import FederationSpec
    from controller.federation.flower import FlowerEngine
    from controller.federation.secagg import RUN_CONFIG_KEY, SecAggSettings
    from controller.fleet.ca import DeviceCA

    engine = FlowerEngine(tmp_path / "fl", DeviceCA.load_or_create(tmp_path / "ca"))
    settings = SecAggSettings(num_shares=5, reconstruction_threshold=3)
    common: dict[str, Any] = {
        "job_id": "j",
        "rounds": 1,
        "min_clients": 5,
        "strategy": {"name": "fedavg"},
        "network": "digits-linear",
        "workdir": tmp_path,
        "output_path": tmp_path / "f.npz",
        "report_url": "",
        "report_token": "",
        "participant_nodes": (1, 2, 3, 4, 5),
    }
    from dataclasses import asdict

    secure = engine.run_config(FederationSpec(**common, secure_aggregation=asdict(settings)))
    assert SecAggSettings.from_json(secure[RUN_CONFIG_KEY]) == settings
    assert engine.run_config(FederationSpec(**common))[RUN_CONFIG_KEY] == ""
