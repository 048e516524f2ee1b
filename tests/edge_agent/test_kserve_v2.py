"""The local API's Open Inference Protocol (KServe v2) routes, driven by Triton's own HTTP client and by raw
HTTP for the error cases, on a real ONNX model (a small classifier plus an int64 second input)."""

from __future__ import annotations

import http.client
import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton
from onnx import TensorProto, helper, numpy_helper
from tritonclient.utils import InferenceServerException

from edge_agent.api import make_server, serve_in_thread
from edge_agent.runtime import ModelRuntime

MODEL = "digits-7"


def model_bytes() -> bytes:
    """x FP32 [N,4] -> probabilities = softmax(x @ W) FP32 [N,3]; k INT64 [N] -> doubled = k * 2 INT64 [N]."""
    w = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["z"]),
            helper.make_node("Softmax", ["z"], ["probabilities"], axis=1),
            helper.make_node("Mul", ["k", "two"], ["doubled"]),
        ],
        "m",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
            helper.make_tensor_value_info("k", TensorProto.INT64, ["N"]),
        ],
        [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("doubled", TensorProto.INT64, ["N"]),
        ],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(2, np.int64), "two")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()


def expected(x: np.ndarray) -> np.ndarray:
    z = x @ (np.arange(12, dtype=np.float32).reshape(4, 3) / 10)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    path = Path(tmp_path_factory.mktemp("v2")) / "m.onnx"
    path.write_bytes(model_bytes())
    runtime = ModelRuntime()
    runtime.swap(MODEL, 7, "0" * 64, path)
    server = make_server(runtime, "127.0.0.1", 0)
    serve_in_thread(server)
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture
def client(port: int) -> Iterator[triton.InferenceServerClient]:
    c = triton.InferenceServerClient(f"127.0.0.1:{port}")
    yield c
    c.close()


def inputs(x: np.ndarray, k: np.ndarray, binary: bool) -> list[triton.InferInput]:
    ix = triton.InferInput("x", list(x.shape), "FP32")
    ix.set_data_from_numpy(x, binary_data=binary)
    ik = triton.InferInput("k", list(k.shape), "INT64")
    ik.set_data_from_numpy(k, binary_data=binary)
    return [ix, ik]


X = np.array([[1, 0, 0, 0], [0, 0.5, 2, -1]], np.float32)
K = np.array([3, -4], np.int64)


def test_health_and_server_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "fedge-agent" and "binary_tensor_data" in meta["extensions"]
    assert client.is_model_ready(MODEL) and client.is_model_ready(MODEL, "7")
    assert not client.is_model_ready("other")


def test_model_metadata_maps_shapes_and_types(client: triton.InferenceServerClient) -> None:
    meta = client.get_model_metadata(MODEL, "7")
    assert meta["name"] == MODEL and meta["versions"] == ["7"]
    assert meta["inputs"] == [
        {"name": "x", "datatype": "FP32", "shape": [-1, 4]},
        {"name": "k", "datatype": "INT64", "shape": [-1]},
    ]
    assert meta["outputs"] == [
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]},
        {"name": "doubled", "datatype": "INT64", "shape": [-1]},
    ]


@pytest.mark.parametrize("binary_in", [True, False])
@pytest.mark.parametrize("binary_out", [True, False])
def test_infer_json_and_binary(
    client: triton.InferenceServerClient, binary_in: bool, binary_out: bool
) -> None:
    outputs = [
        triton.InferRequestedOutput("probabilities", binary_data=binary_out),
        triton.InferRequestedOutput("doubled", binary_data=binary_out),
    ]
    result = client.infer(MODEL, inputs(X, K, binary_in), model_version="7", outputs=outputs, request_id="r1")
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected(X), rtol=1e-5)
    doubled = result.as_numpy("doubled")
    assert doubled.dtype == np.int64 and doubled.tolist() == [6, -8]
    response = result.get_response()
    assert response["model_name"] == MODEL and response["model_version"] == "7" and response["id"] == "r1"
    sent_binary = ["parameters" in o and "data" not in o for o in response["outputs"]]
    assert sent_binary == [binary_out, binary_out]


def test_infer_default_outputs_are_binary_and_one_output_can_be_picked(
    client: triton.InferenceServerClient,
) -> None:
    everything = client.infer(MODEL, inputs(X, K, True))  # no outputs: binary_data_output true
    assert [o["parameters"]["binary_data_size"] for o in everything.get_response()["outputs"]] == [24, 16]
    one = client.infer(MODEL, inputs(X, K, True), outputs=[triton.InferRequestedOutput("doubled", False)])
    assert one.get_response()["outputs"] == [
        {"name": "doubled", "datatype": "INT64", "shape": [2], "data": [6, -8]}
    ]


def test_bad_input_is_an_error(client: triton.InferenceServerClient) -> None:
    wrong = triton.InferInput("x", [2, 4], "FP64")
    wrong.set_data_from_numpy(X.astype(np.float64))
    with pytest.raises(InferenceServerException, match="datatype 'FP64', the model expects FP32"):
        client.infer(MODEL, [wrong, inputs(X, K, True)[1]])
    with pytest.raises(InferenceServerException, match="missing inputs \\['k'\\]"):
        client.infer(MODEL, inputs(X, K, True)[:1])
    with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
        client.infer("nope", inputs(X, K, True))


def raw(
    port: int, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, Any, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body or None, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


def header(request: dict[str, Any]) -> bytes:
    return json.dumps(request).encode()


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "message"),
    [
        ("GET", "/v2/models/nope", b"", {}, 404, "unknown model 'nope'"),
        ("GET", f"/v2/models/{MODEL}/versions/3", b"", {}, 404, "unknown version '3'"),
        ("GET", f"/v2/models/{MODEL}/infer", b"", {}, 405, "only POST"),
        ("POST", "/v2/health/live", b"{}", {}, 405, "only GET"),
        ("GET", "/v2/repository/index", b"", {}, 404, "no route"),
        ("POST", f"/v2/models/{MODEL}/infer", b"{not json", {}, 400, "not JSON"),
        ("POST", f"/v2/models/{MODEL}/infer", header({"inputs": {}}), {}, 400, "'inputs' must be a list"),
        (
            "POST",
            f"/v2/models/{MODEL}/infer",
            header({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3]}]}),
            {},
            400,
            "3 elements of data for shape [1, 4]",
        ),
        (
            "POST",
            f"/v2/models/{MODEL}/infer",
            header(
                {
                    "inputs": [
                        {
                            "name": "x",
                            "datatype": "FP32",
                            "shape": [1, 4],
                            "parameters": {"binary_data_size": 16},
                        }
                    ]
                }
            )
            + b"\0" * 8,
            {"Inference-Header-Content-Length": "-"},
            400,
            "is not an integer",
        ),
        (
            "POST",
            f"/v2/models/{MODEL}/infer",
            header(
                {
                    "inputs": [
                        {
                            "name": "x",
                            "datatype": "FP32",
                            "shape": [1, 4],
                            "parameters": {"binary_data_size": 16},
                        }
                    ]
                }
            )
            + b"\0" * 8,
            {
                "Inference-Header-Content-Length": str(
                    len(
                        header(
                            {
                                "inputs": [
                                    {
                                        "name": "x",
                                        "datatype": "FP32",
                                        "shape": [1, 4],
                                        "parameters": {"binary_data_size": 16},
                                    }
                                ]
                            }
                        )
                    )
                )
            },
            400,
            "binary_data_size 16 runs past",
        ),
        (
            "POST",
            f"/v2/models/{MODEL}/infer",
            header(
                {
                    "inputs": [
                        {"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]},
                        {"name": "k", "datatype": "INT64", "shape": [1], "data": [1]},
                    ]
                }
            ),
            {},
            400,
            "",  # ORT's own shape error, as a 400
        ),
        (
            "POST",
            f"/v2/models/{MODEL}/infer",
            header({"inputs": []}),
            {"Content-Encoding": "br"},
            415,
            "Content-Encoding 'br'",
        ),
    ],
)
def test_client_errors_are_4xx_json(
    port: int, method: str, path: str, body: bytes, headers: dict[str, str], status: int, message: str
) -> None:
    got, resp_headers, data = raw(port, method, path, body, headers)
    assert got == status
    problem = json.loads(data)
    assert message in problem["error"] and problem["status"] == status
    assert resp_headers["Content-Type"] == "application/problem+json"


def test_compressed_requests_are_inflated(client: triton.InferenceServerClient) -> None:
    result = client.infer(MODEL, inputs(X, K, True), request_compression_algorithm="gzip")
    assert result.as_numpy("doubled").tolist() == [6, -8]
    result = client.infer(MODEL, inputs(X, K, False), request_compression_algorithm="deflate")
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected(X), rtol=1e-5)


def test_keep_alive_serves_many_requests_on_one_connection(port: int) -> None:
    request = header(
        {
            "inputs": [
                {"name": "x", "datatype": "FP32", "shape": [1, 4], "parameters": {"binary_data_size": 16}},
                {"name": "k", "datatype": "INT64", "shape": [1], "data": [5]},
            ],
            "outputs": [{"name": "doubled", "parameters": {"binary_data": True}}],
        }
    )
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        for i in range(3):
            body = request + np.array([[i, 0, 0, 0]], np.float32).tobytes()
            conn.request(
                "POST",
                f"/v2/models/{MODEL}/versions/7/infer",
                body=body,
                headers={"Inference-Header-Content-Length": str(len(request))},
            )
            resp = conn.getresponse()
            data = resp.read()
            assert resp.status == 200 and resp.version == 11
            size = int(resp.headers["Inference-Header-Content-Length"])
            meta = json.loads(data[:size])
            assert meta["outputs"][0]["parameters"] == {"binary_data_size": 8}
            assert struct.unpack("<q", data[size:]) == (10,)
        status, _, _ = raw(port, "GET", "/v1/model")  # the v1 routes on the same server
        assert status == 200
    finally:
        conn.close()
