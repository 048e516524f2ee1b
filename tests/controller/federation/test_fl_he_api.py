"""privacy.he in the FL jobs API: accepted and stored; bad combinations refused with a precise 422."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from controller.app import create_app
from controller.chain.base import ChainBackend
from controller.config import ControllerSettings
from controller.federation.manager import _he_settings
from controller.state import build_state
from tests.conftest import ADMIN_TOKEN
from tests.controller.federation.fl_helpers import (
    ADMIN,
    enroll_direct,
    job_body,
    problem,
    register_digits_model,
)


@pytest.fixture
def submit(tmp_path: Path, shared_evm: ChainBackend) -> Iterator[Any]:
    settings = ControllerSettings(data_dir=tmp_path / "data", admin_token=ADMIN_TOKEN, _env_file=None)
    state = build_state(settings, shared_evm, start_jobs=False)
    with TestClient(create_app(state)) as client:
        _, model_id = register_digits_model(client)
        devices = [enroll_direct(state, site="lab"), enroll_direct(state, site="lab")]

        def post(**extra: Any) -> Any:
            return client.post("/v1/fl/jobs", headers=ADMIN, json=job_body(model_id, devices, **extra))

        post.client = client  # type: ignore[attr-defined]
        yield post
    state.close()


def test_an_he_job_with_local_dp_is_queued_and_keeps_its_settings(submit: Any) -> None:
    he = {"masking": True, "poly_modulus_degree": 8192}
    r = submit(privacy={"he": he, "dp": {"epsilon": 5}})
    assert r.status_code == 202, r.text
    job = submit.client.get(f"/v1/fl/jobs/{r.json()['job_id']}", headers=ADMIN).json()
    assert job["privacy"]["he"] == {
        "enabled": True,
        "poly_modulus_degree": 8192,
        "scale_bits": 34,
        "masking": True,
    }
    assert _he_settings(job["privacy"]) == {"poly_modulus_degree": 8192, "scale_bits": 34, "masking": True}


def test_he_switched_off_runs_no_he() -> None:
    assert _he_settings({"he": {"enabled": False, "masking": True}}) is None
    assert _he_settings({"dp": {"epsilon": 1}}) is None
    assert _he_settings(None) is None


@pytest.mark.parametrize(
    ("extra", "field", "words"),
    [
        ({"privacy": {"he": {"poly_modulus_degree": 2048}}}, "body.privacy.he.poly_modulus_degree", "4096"),
        ({"privacy": {"he": {"scale_bits": 60}}}, "body.privacy.he.scale_bits", "less than or equal to 50"),
        ({"privacy": {"he": {"mask": True}}}, "body.privacy.he.mask", "Extra inputs are not permitted"),
        (
            {"privacy": {"he": {}, "central_dp": {"noise_multiplier": 1.0, "clipping_norm": 1.0}}},
            "body.privacy",
            "he and central_dp exclude each other",
        ),
        (
            {"privacy": {"he": {}, "secure_aggregation": {}}},
            "body.privacy",
            "he and secure_aggregation exclude each other",
        ),
        ({"privacy": {"he": {}}, "strategy": {"name": "krum"}}, "body", "strategy fedavg only, not 'krum'"),
        ({"privacy": {"he": {}}, "engine": "nvflare"}, "body", "flower engine only"),
    ],
)
def test_a_bad_he_job_is_refused_with_a_precise_422(
    submit: Any, extra: dict[str, Any], field: str, words: str
) -> None:
    p = problem(submit(**extra))
    assert p.status == 422, p.body
    assert p.field == field and words in p.detail, p.body
