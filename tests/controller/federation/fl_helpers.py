"""Helpers for the FL job tests: digits data, enrolled devices, a registered model, job bodies."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from cryptography.hazmat.primitives.asymmetric import ec

from controller.state import ControllerState
from edge_agent.identity import make_csr

ADMIN = {"Authorization": "Bearer fedge_test-admin-token-0123456789abcdef"}


def digits(n: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """sklearn's 8x8 digits as ``[N, 1, 8, 8]`` float32 in [0, 1] and int64 labels (shuffled)."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    idx = np.random.default_rng(seed).permutation(len(x))
    x = (x[idx] / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    y = y[idx].astype(np.int64)
    return (x[:n], y[:n]) if n else (x, y)


def digits_npz(n: int = 400, seed: int = 0) -> bytes:
    x, y = digits(n, seed)
    buf = io.BytesIO()
    np.savez(buf, x=x, y=y)
    return buf.getvalue()


def write_partition(path: Path, part: int, parts: int, n: int = 600) -> Path:
    """One device's local data: a shard of digits for training, a common held-out split."""
    x, y = digits()
    test_x, test_y = x[-200:], y[-200:]
    shard = np.array_split(np.arange(min(n, len(x) - 200)), parts)[part]
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=x[shard], y=y[shard], x_test=test_x, y_test=test_y)
    return path


def enroll_direct(state: ControllerState, **labels: str) -> str:
    """Enroll a device through the fleet service (no agent); its id."""
    token, _ = state.fleet.mint_enrollment_token(dict(labels), 600, "admin")
    key = ec.generate_private_key(ec.SECP256R1())
    return state.fleet.enroll(token, make_csr(key), dict(labels), {"cpu_count": 1}).device_id


def register_digits_model(client: httpx.Client, **training: Any) -> tuple[str, str]:
    """A digits dataset (name ``digits``, dims (1,8,8)) and a model on it; (dataset_id, model_id)."""
    r = client.post(
        "/v1/datasets",
        headers=ADMIN,
        files={"dataset": ("digits.npz", digits_npz(), "application/octet-stream")},
        data={"metadata": json.dumps({"organization_id": "org-1", "samples_dimension": "(1,8,8)",
                                      "name": "digits"})},
    )  # fmt: skip
    assert r.status_code == 201, r.text
    dataset_id = r.json()["dataset_id"]
    body: dict[str, Any] = {
        "model_params": {"developer_id": "dev-1", "organization_id": "org-1"},
        "data_params": {"dataset_id": dataset_id},
    }
    if training:
        body["training"] = training
    r = client.post("/v1/models", headers=ADMIN, json=body)
    assert r.status_code == 201, r.text
    return dataset_id, r.json()["model_id"]


def job_body(model_id: str, device_ids: list[str], **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": {"model_id": model_id, "network": "digits-linear"},
        "participants": {"device_ids": device_ids},
        "rounds": 2,
    }
    body.update(extra)
    return body


@dataclass
class Problem:
    status: int
    field: str | None
    detail: str
    body: dict[str, Any]


def problem(resp: Any) -> Problem:
    assert resp.headers["content-type"].startswith("application/problem+json"), resp.text
    body = resp.json()
    return Problem(resp.status_code, body.get("field"), body["detail"], body)
