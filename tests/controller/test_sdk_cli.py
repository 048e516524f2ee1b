"""The Python SDK and the ``fedge`` CLI against a live controller on loopback."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from controller.client import FedgeAPIError, FedgeClient
from tests.conftest import ADMIN_TOKEN, LiveServer, fedge_cli


def _fedge(live: LiveServer, *args: str, token: str = ADMIN_TOKEN) -> subprocess.CompletedProcess[str]:
    return fedge_cli(live, *args, token=token)


def test_sdk_round_trip_with_progress(live: LiveServer, tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 5)
    src = tmp_path / "d.npz"
    src.write_bytes(data)
    seen: list[int] = []
    with FedgeClient(live.url, ADMIN_TOKEN) as fc:
        created = fc.push_dataset(
            src, {"organization_id": "o", "samples_dimension": [1, 8, 8]}, progress=seen.append
        )
        assert sum(seen) == len(data)
        assert fc.dataset_metadata(created.dataset_id).samples_dimension == "(1,8,8)"
        model = fc.register_model(
            {
                "model_params": {"developer_id": "d", "organization_id": "o"},
                "data_params": {"dataset_id": created.dataset_id},
            },
            train_image="example/train:1",
        )
        with pytest.raises(FedgeAPIError) as info:
            fc.download_model(model.model_id, tmp_path / "m.bin")
        assert info.value.status == 409
        assert not (tmp_path / "m.bin").exists()
        art = tmp_path / "weights.pt"
        art.write_bytes(b"w" * 1000)
        stored = fc.put_artifact(model.model_id, art, fmt="pytorch")
        sha = fc.download_model(model.model_id, tmp_path / "m.bin")
    assert created.sha256 == hashlib.sha256(data).hexdigest()
    assert sha == stored.sha256 == hashlib.sha256(b"w" * 1000).hexdigest()
    assert (tmp_path / "m.bin").read_bytes() == b"w" * 1000


def test_cli_push_list_get(live: LiveServer, tmp_path: Path) -> None:
    src = tmp_path / "digits.npz"
    src.write_bytes(os.urandom(20_000))
    pushed = _fedge(
        live, "datasets", "push", str(src), "--org", "org-9", "--dims", "(1,8,8)", "--name", "dg", "--json"
    )
    assert pushed.returncode == 0, pushed.stderr
    dataset_id = json.loads(pushed.stdout)["dataset_id"]
    listed = _fedge(live, "datasets", "list", "--json")
    assert [d["dataset_id"] for d in json.loads(listed.stdout)["items"]] == [dataset_id]
    out = tmp_path / "back.npz"
    got = _fedge(live, "datasets", "get", dataset_id, "-o", str(out))
    assert got.returncode == 0, got.stderr
    assert out.read_bytes() == src.read_bytes()
    assert "verified" in got.stderr


def test_cli_models_register_status_and_not_trained_error(live: LiveServer, tmp_path: Path) -> None:
    src = tmp_path / "d.bin"
    src.write_bytes(b"abc")
    dataset_id = json.loads(
        _fedge(live, "datasets", "push", str(src), "--org", "o", "--dims", "(3)", "--json").stdout
    )["dataset_id"]
    reg = _fedge(
        live, "models", "register", "--dataset", dataset_id, "--developer", "d", "--org", "o", "--json"
    )
    assert reg.returncode == 0, reg.stderr
    model_id = json.loads(reg.stdout)["model_id"]
    status = _fedge(live, "models", "status", model_id, "--json")
    assert json.loads(status.stdout)["status"] == "registered"
    get = _fedge(live, "models", "get", model_id, "-o", str(tmp_path / "m"))
    assert get.returncode == 1
    assert "has not been trained yet" in get.stderr


def test_cli_reports_auth_errors_cleanly(live: LiveServer) -> None:
    r = _fedge(live, "datasets", "list", token="fedge_wrong")
    assert r.returncode == 1
    assert "401" in r.stderr and "invalid token" in r.stderr
