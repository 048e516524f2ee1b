"""The ``/v1/online`` routes on the real local API server, and ``fedge-agent online`` against it."""

from __future__ import annotations

import json
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from edge_agent.api import LocalApi
from edge_agent.cli import app
from edge_agent.online.config import OnlineConfig
from edge_agent.online.service import OnlineService
from edge_agent.runtime.session import ModelRuntime
from tests.edge_agent.online.streams import linear_stream, meter_stream

CONFIG = {
    "learners": [
        {"name": "lin", "backend": "river", "transformer": "features", "save": {"evaluate_every": 50}},
        {
            "name": "meter",
            "backend": "river",
            "transformer": "smart_meter",
            "transformer_options": {"horizon": 4},
        },
    ]
}


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[httpx.Client, OnlineService]]:
    service = OnlineService.from_config(OnlineConfig.model_validate(CONFIG), tmp_path)
    server = LocalApi(ModelRuntime(), "127.0.0.1", 0, online=service.routes())
    service.start()
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            yield client, service
    finally:
        server.stop()
        service.stop()


def _problem(resp: httpx.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = resp.json()
    assert body["status"] == status and body["detail"]
    return body


def test_update_learns_prequentially_and_status_shows_it(api: tuple[httpx.Client, OnlineService]) -> None:
    client, _ = api
    answers = [client.post("/v1/online/lin/update", json=m) for m in linear_stream(300)]

    assert all(a.status_code == 200 for a in answers)
    losses = [a.json()["loss"] for a in answers if a.json()["loss"] is not None]
    assert np.mean(losses[-50:]) < 0.25 * np.mean(losses[:20])
    status = client.get("/v1/online/lin").json()
    assert status["samples_seen"] == 300 and status["state"] == "learning"
    assert status["last_saved_version"] >= 1 and status["queue"]["capacity"] == 10_000
    assert status["drift"] is None
    listed = client.get("/v1/online").json()["learners"]
    assert [s["name"] for s in listed] == ["lin", "meter"]


def test_predict_learns_nothing(api: tuple[httpx.Client, OnlineService]) -> None:
    client, service = api
    for m in linear_stream(50):
        client.post("/v1/online/lin/update", json=m)
    before = service.learners["lin"].fingerprint()

    resp = client.post("/v1/online/lin/predict", json={"x": [10.0, 10.0, 10.0, 10.0, 10.0]})

    assert resp.status_code == 200 and isinstance(resp.json()["prediction"]["prediction"], float)
    assert service.learners["lin"].fingerprint() == before
    assert client.get("/v1/online/lin").json()["samples_seen"] == 50


def test_the_smart_meter_answers_in_its_own_words(api: tuple[httpx.Client, OnlineService]) -> None:
    client, _ = api
    answers = [client.post("/v1/online/meter/update", json=m).json() for m in meter_stream(50)]

    assert answers[0]["prediction"]["warming_up"] == "1/36 readings"
    last = answers[-1]["prediction"]
    assert (
        set(last) == {"timestamp", "forecast_for", "horizon_s", "consumption"} and last["horizon_s"] == 3600.0
    )
    latest = client.post("/v1/online/meter/predict", json={}).json()["prediction"]
    assert latest["forecast_for"] == last["forecast_for"]


def test_bad_requests_get_precise_problems(api: tuple[httpx.Client, OnlineService]) -> None:
    client, _ = api
    client.post("/v1/online/lin/update", json={"x": [1.0] * 5, "y": 1.0})

    assert _problem(client.post("/v1/online/lin/update", content=b"{oops"), 422)["reason"] == "malformed_json"
    assert (
        _problem(client.post("/v1/online/lin/update", json={"x": [1.0]}), 422)["reason"]
        == "wrong_feature_count"
    )
    nan = b'{"x": [NaN, 1, 1, 1, 1], "y": 1}'
    assert _problem(client.post("/v1/online/lin/update", content=nan), 422)["reason"] == "non_finite"
    big = json.dumps({"x": [1.0] * 5, "pad": "x" * 70_000}).encode()
    assert _problem(client.post("/v1/online/lin/update", content=big), 413)["reason"] == "too_large"
    _problem(client.get("/v1/online/nope"), 404)
    _problem(client.post("/v1/online/lin/train", json={}), 404)
    _problem(client.get("/v1/online/lin/update"), 405)
    _problem(client.post("/v1/online/lin"), 405)
    _problem(client.post("/v1/online/meter/predict", json={}), 409)  # no model, no full window yet
    rejected = client.get("/v1/online/lin").json()["rejected"]
    assert rejected == {"malformed_json": 1, "wrong_feature_count": 1, "non_finite": 1, "too_large": 1}


def test_explain_without_an_explainer_is_a_409(
    api: tuple[httpx.Client, OnlineService], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, _ = api
    for m in linear_stream(30):
        client.post("/v1/online/lin/update", json=m)
    monkeypatch.setitem(sys.modules, "edge_agent.learning.explain", None)  # import fails

    body = _problem(client.post("/v1/online/lin/explain", json={"x": [10.0] * 5}), 409)

    assert body["title"] == "No explainer" and "river" in body["detail"]


def test_explain_hands_the_model_and_the_raw_features_to_the_explainer(
    api: tuple[httpx.Client, OnlineService], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, _ = api
    for m in linear_stream(30):
        client.post("/v1/online/lin/update", json=m)
    seen: list[Any] = []
    module = types.ModuleType("edge_agent.learning.explain")

    def explain(model: Any, x: np.ndarray) -> np.ndarray:
        seen.append((model, x))
        return x * 0.5

    module.explain = explain  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "edge_agent.learning.explain", module)

    resp = client.post("/v1/online/lin/explain", json={"x": [1.0, 2.0, 3.0, 4.0, 5.0]})

    assert resp.status_code == 200, resp.text
    assert resp.json()["attributions"] == [0.5, 1.0, 1.5, 2.0, 2.5]
    model, x = seen[0]
    assert hasattr(model, "predict_one") and x.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]


def test_the_cli_shows_the_learners(api: tuple[httpx.Client, OnlineService]) -> None:
    client, _ = api
    for m in linear_stream(120):
        client.post("/v1/online/lin/update", json=m)
    url = str(client.base_url)

    listed = CliRunner().invoke(app, ["online", "list", "--api-url", url])
    status = CliRunner().invoke(app, ["online", "status", "lin", "--api-url", url])
    missing = CliRunner().invoke(app, ["online", "status", "nope", "--api-url", url])

    assert listed.exit_code == 0, listed.output
    lines = listed.output.splitlines()
    assert lines[0].split()[:4] == ["NAME", "BACKEND", "STATE", "SAMPLES"]
    assert lines[1].split()[:4] == ["lin", "river", "learning", "120"]
    assert lines[2].split()[:4] == ["meter", "river", "new", "0"]
    assert status.exit_code == 0 and json.loads(status.output)["samples_seen"] == 120
    assert missing.exit_code == 1 and "404" in missing.output
