"""Tiny ONNX models, model upload and in-process agents for the fleet tests."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
from onnx import TensorProto, helper

from edge_agent.deploy.agent import Agent
from edge_agent.identity import DeviceIdentity, enroll
from edge_agent.link.client import ControllerLink


def add_model(constant: float = 1.0) -> bytes:
    """y = x + constant, x: float[1, 4]."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    c = helper.make_tensor("c", TensorProto.FLOAT, [1], [constant])
    graph = helper.make_graph([helper.make_node("Add", ["x", "c"], ["y"])], "add", [x], [y], [c])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def failing_model() -> bytes:
    """Declares x: float[1, 4] but reshapes it to [3] at run time: loads fine, fails when run."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    shape = helper.make_tensor("shape", TensorProto.INT64, [1], np.array([3], dtype=np.int64))
    graph = helper.make_graph([helper.make_node("Reshape", ["x", "shape"], ["y"])], "bad", [x], [y], [shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


ADMIN = {"Authorization": "Bearer fedge_test-admin-token-0123456789abcdef"}


def upload_onnx(
    http: httpx.Client, data: bytes, model_id: str | None = None, *, headers: dict[str, str] = ADMIN
) -> tuple[str, int]:
    """Register a model (first time) and store ``data`` as an ONNX version; (model_id, version).
    ``headers`` authenticate every request (the test controllers' admin token by default)."""
    if model_id is None:
        ds = http.post(
            "/v1/datasets",
            headers=headers,
            files={"dataset": ("d.npz", b"data", "application/octet-stream")},
            data={"metadata": json.dumps({"organization_id": "org-1", "samples_dimension": "(4,)"})},
        )
        assert ds.status_code == 201, ds.text
        body = {
            "model_params": {"developer_id": "dev-1", "organization_id": "org-1"},
            "data_params": {"dataset_id": ds.json()["dataset_id"]},
        }
        r = http.post("/v1/models", headers=headers, json=body)
        assert r.status_code == 201, r.text
        model_id = str(r.json()["model_id"])
    r = http.put(
        f"/v1/models/{model_id}/artifact?kind=onnx&filename=model.onnx", headers=headers, content=data
    )
    assert r.status_code == 201, r.text
    return model_id, int(r.json()["version"])


def enrollment_token(http: httpx.Client, labels: dict[str, str] | None = None, ttl: int = 600) -> str:
    r = http.post("/v1/enrollment-tokens", headers=ADMIN, json={"labels": labels or {}, "ttl_seconds": ttl})
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


@dataclass
class Device:
    identity: DeviceIdentity
    link: ControllerLink
    agent: Agent
    state_dir: Path

    @property
    def id(self) -> str:
        return self.identity.device_id


def enrolled_device(url: str, http: httpx.Client, state_dir: Path, **labels: str) -> Device:
    identity = enroll(url, enrollment_token(http, labels), state_dir, facts={"cpu_count": 1})
    link = ControllerLink(identity)
    agent = Agent(state_dir, link)
    agent.start()
    return Device(identity, link, agent, state_dir)


def deploy(http: httpx.Client, model_id: str, version: int, device_ids: list[str], **kw: Any) -> str:
    r = http.post(
        "/v1/deployments",
        headers=ADMIN,
        json={"model_id": model_id, "version": version, "device_ids": device_ids, **kw},
    )
    assert r.status_code == 201, r.text
    return str(r.json()["deployment_id"])
