"""Downloads straight from S3: with the S3 store the device download route answers 307 to a short-lived
presigned URL (the controller proxies no bytes), the agent fetches from SeaweedFS itself, and a tampered
object is refused by the device's own SHA-256 check against the signed chain hash."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from minio import Minio

from controller.chain.base import ChainBackend
from controller.config import ControllerSettings
from controller.state import ControllerState, build_state
from fedge_protocol import paths
from tests.conftest import ADMIN_TOKEN, LiveServer
from tests.e2e.helpers import ADMIN, add_model, deploy, enrolled_device, upload_onnx

Live = tuple[LiveServer, ControllerState]


@pytest.fixture(scope="module")
def s3_controller(
    tmp_path_factory: pytest.TempPathFactory, shared_evm: ChainBackend, s3_server
) -> Iterator[Live]:  # type: ignore[no-untyped-def]
    settings = ControllerSettings(
        data_dir=tmp_path_factory.mktemp("s3-controller"),
        admin_token=ADMIN_TOKEN,
        **s3_server.controller_settings(f"p{uuid.uuid4().hex[:10]}-"),
        s3_presign_seconds=60,
        _env_file=None,  # type: ignore[call-arg]
    )
    state = build_state(settings, shared_evm, start_jobs=False)
    with LiveServer(state) as server:
        yield server, state
    state.close()


@pytest.fixture(scope="module")
def s3_http(s3_controller: Live) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=s3_controller[0].url, timeout=30) as client:
        yield client


def _states(http: httpx.Client, deployment_id: str) -> dict[str, str]:
    body = http.get(f"/v1/deployments/{deployment_id}", headers=ADMIN).json()
    return {t["device_id"]: t["state"] for t in body["devices"]}


def test_device_downloads_from_s3_through_a_presigned_url_and_refuses_a_tampered_object(
    s3_controller: Live, s3_http: httpx.Client, s3_server, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    state = s3_controller[1]
    dev = enrolled_device(s3_controller[0].url, s3_http, tmp_path / "agent")
    model_id, v1 = upload_onnx(s3_http, add_model(1.0))
    dep = deploy(s3_http, model_id, v1, [dev.id])

    # the route hands out storage's URL, not the bytes; the URL serves exactly the registered object
    path = paths.MODEL_DOWNLOAD.format(device_id=dev.id, model_id=model_id, version=v1)
    r = dev.link.http.get(path)
    assert r.status_code == 307, r.text
    location = r.headers["location"]
    assert location.startswith(f"http://{s3_server.endpoint}/") and "X-Amz-Signature=" in location
    assert r.headers["x-content-sha256"] == state.registry.resolve_version(model_id, v1).sha256
    assert r.content == b""
    assert httpx.get(location).content == add_model(1.0)
    assert httpx.get(location.split("?")[0]).status_code == 403  # unsigned: storage refuses

    dev.agent.step()
    assert _states(s3_http, dep) == {dev.id: "succeeded"}
    assert dev.agent.runtime.infer({"x": [[0, 0, 0, 0]]}) == {"y": [[1.0, 1.0, 1.0, 1.0]]}

    # v2 registered, then its object overwritten in S3 behind the controller's back
    _, v2 = upload_onnx(s3_http, add_model(2.0), model_id)
    mv = state.registry.resolve_version(model_id, v2)
    raw = Minio(s3_server.endpoint, s3_server.access_key, s3_server.secret_key, secure=False)
    forged = add_model(5.0)
    raw.put_object(mv.bucket, mv.object_key, io.BytesIO(forged), len(forged))

    dep2 = deploy(s3_http, model_id, v2, [dev.id])
    outcome = dev.agent.step()
    assert outcome is not None and outcome.state == "rejected"
    assert "differs from the signed chain record" in (outcome.error or "")
    assert _states(s3_http, dep2) == {dev.id: "rejected"}
    assert dev.agent.runtime.infer({"x": [[0, 0, 0, 0]]}) == {"y": [[1.0, 1.0, 1.0, 1.0]]}  # v1 kept


def test_presigned_downloads_off_streams_through_the_controller(
    tmp_path: Path, shared_evm: ChainBackend, s3_server
) -> None:  # type: ignore[no-untyped-def]
    settings = ControllerSettings(
        data_dir=tmp_path / "ctl",
        admin_token=ADMIN_TOKEN,
        **s3_server.controller_settings(f"q{uuid.uuid4().hex[:10]}-"),
        s3_presigned_downloads=False,
        _env_file=None,  # type: ignore[call-arg]
    )
    state = build_state(settings, shared_evm, start_jobs=False)
    try:
        with LiveServer(state) as server, httpx.Client(base_url=server.url, timeout=30) as http:
            dev = enrolled_device(server.url, http, tmp_path / "agent")
            model_id, v1 = upload_onnx(http, add_model(3.0))
            dep = deploy(http, model_id, v1, [dev.id])
            r = dev.link.http.get(
                paths.MODEL_DOWNLOAD.format(device_id=dev.id, model_id=model_id, version=v1)
            )
            assert r.status_code == 200 and r.content == add_model(3.0)
            dev.agent.step()
            assert _states(http, dep) == {dev.id: "succeeded"}
    finally:
        state.close()
