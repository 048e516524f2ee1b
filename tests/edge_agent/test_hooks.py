"""Image requests with pre-/post-processing hooks through the local API (the seed's object-detection
pattern: a picture in, a decision out)."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from edge_agent.api import make_server, serve_in_thread
from edge_agent.runtime import ModelRuntime
from edge_agent.runtime.hooks import BadRequest, InferenceService, load_hook


def classifier() -> bytes:
    """x [N,1,8,8] -> softmax(flatten(x) @ W + b): a white image is class 0, a black one class 1."""
    w = np.zeros((64, 10), np.float32)
    w[:, 0], w[:, 1] = 1.0, -1.0
    b = np.zeros(10, np.float32)
    b[1] = 0.5
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["x"], ["f"], axis=1),
            helper.make_node("MatMul", ["f", "w"], ["l"]),
            helper.make_node("Add", ["l", "b"], ["z"]),
            helper.make_node("Softmax", ["z"], ["probabilities"], axis=1),
        ],
        "clf",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    return onnx.helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()


def png(value: int, size: tuple[int, int] = (32, 32), mode: str = "RGB") -> str:
    buf = io.BytesIO()
    Image.new(mode, size, (value, value, value) if mode == "RGB" else value).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture
def api(tmp_path: Path) -> Iterator[str]:
    path = tmp_path / "m.onnx"
    path.write_bytes(classifier())
    runtime = ModelRuntime()
    runtime.swap("m", 1, "0" * 64, path)
    server = make_server(runtime, "127.0.0.1", 0)
    serve_in_thread(server)
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _infer(url: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{url}/v1/infer", content=json.dumps(body), timeout=10)


def test_an_image_is_resized_greyed_and_classified(api: str) -> None:
    white = _infer(api, {"image": png(255)})
    black = _infer(api, {"image": png(0)})
    assert white.status_code == 200, white.text
    assert white.json()["predictions"] == [{"class": 0, "score": pytest.approx(1.0)}]
    assert black.json()["predictions"][0]["class"] == 1
    assert len(white.json()["outputs"]["probabilities"][0]) == 10


def test_a_batch_of_images_and_inversion(api: str) -> None:
    r = _infer(api, {"images": [png(255), png(0, mode="L")], "invert": True})
    assert [p["class"] for p in r.json()["predictions"]] == [1, 0]


def test_raw_tensors_still_work_and_get_predictions(api: str) -> None:
    r = _infer(api, {"inputs": {"x": np.ones((1, 1, 8, 8)).tolist()}})
    assert r.json()["predictions"][0]["class"] == 0


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"image": "%%%not base64"}, "base64"),
        ({"image": base64.b64encode(b"not an image").decode()}, "cannot be decoded"),
        ({"images": []}, "list of 1"),
        ({"something": 1}, "expected"),
    ],
)
def test_bad_requests_are_422_problems(api: str, body: dict[str, Any], detail: str) -> None:
    r = _infer(api, body)
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
    assert detail in r.json()["detail"]


def scale_by_two(request: dict[str, Any], inputs: list[Any]) -> dict[str, Any]:
    """A custom pre-processing hook (loaded by path in the test below)."""
    return {inputs[0].name: np.full((1, 1, 8, 8), float(request["level"]), np.float32)}


def test_custom_hooks_load_by_path(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(classifier())
    runtime = ModelRuntime()
    runtime.swap("m", 1, "0" * 64, path)
    service = InferenceService.from_paths(
        runtime, "tests.edge_agent.test_hooks:scale_by_two", "tests.edge_agent.test_hooks:no_predictions"
    )
    response = service.handle({"image": "ignored by the hook", "level": 1.0})
    assert response["decision"] == 0
    with pytest.raises(ValueError, match="module:function"):
        load_hook("no_colon")
    with pytest.raises(BadRequest):
        InferenceService(runtime).handle({"inputs": [1, 2]})


def no_predictions(_request: dict[str, Any], outputs: dict[str, Any]) -> dict[str, Any]:
    return {"decision": int(np.argmax(outputs["probabilities"][0]))}
