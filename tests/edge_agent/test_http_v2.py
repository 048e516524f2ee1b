"""The HTTP/1.1 layer under the local API (``edge_agent.api_v2.HttpServer``), driven over raw sockets: what
it does with malformed, pipelined, kept-alive, chunked, oversized and HTTP/1.0 requests."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.api import make_server, serve_in_thread
from edge_agent.api_v2 import MAX_BODY, MAX_HEAD, HttpError, HttpServer, parse_head
from edge_agent.runtime import ModelRuntime
from tests.edge_agent.test_kserve_v2 import MODEL, expected, model_bytes

INFER = f"/v2/models/{MODEL}/versions/7/infer"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpServer]:
    path = Path(tmp_path_factory.mktemp("http")) / "m.onnx"
    path.write_bytes(model_bytes())
    runtime = ModelRuntime()
    runtime.swap(MODEL, 7, "0" * 64, path)
    server = make_server(runtime, "127.0.0.1", 0)
    serve_in_thread(server)
    yield server
    server.shutdown()
    server.server_close()


class Conn:
    """A raw client connection reading whole responses (status, lower-case headers, body) in order."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.file = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self) -> tuple[int, dict[str, str], bytes]:
        status_line = self.file.readline()
        assert status_line.startswith(b"HTTP/1.1 "), status_line
        headers: dict[str, str] = {}
        while (line := self.file.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(status_line.split()[1]), headers, self.file.read(int(headers["content-length"]))

    def closed_by_server(self) -> bool:
        return self.file.read(1) == b""

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@pytest.fixture
def conn(server: HttpServer) -> Iterator[Conn]:
    c = Conn(server.server_port)
    yield c
    c.close()


def infer_request(x: np.ndarray, extra_headers: str = "", *, length: bool = True) -> bytes:
    """A binary-tensor infer request for ``x`` (k = 0) with its output ``probabilities`` in binary."""
    k = np.zeros(len(x), np.int64)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": list(x.shape),
                    "parameters": {"binary_data_size": x.nbytes},
                },
                {
                    "name": "k",
                    "datatype": "INT64",
                    "shape": [len(x)],
                    "parameters": {"binary_data_size": k.nbytes},
                },
            ],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
        }
    ).encode()
    body = header + x.tobytes() + k.tobytes()
    fields = f"Content-Length: {len(body)}\r\n" if length else ""
    head = (
        f"POST {INFER} HTTP/1.1\r\nHost: 127.0.0.1\r\n{fields}"
        f"Inference-Header-Content-Length: {len(header)}\r\n{extra_headers}\r\n"
    )
    return head.encode() + body


def probabilities(reply: tuple[int, dict[str, str], bytes], rows: int) -> np.ndarray:
    status, headers, body = reply
    assert status == 200, body[:300]
    offset = int(headers["inference-header-content-length"])
    return np.frombuffer(body[offset:], np.float32).reshape(rows, 3)


def problem(reply: tuple[int, dict[str, str], bytes]) -> dict[str, Any]:
    status, headers, body = reply
    assert headers["content-type"] == "application/problem+json"
    data: dict[str, Any] = json.loads(body)
    assert data["status"] == status
    return data


X = np.array([[1, 0, 0, 0], [0, 0.5, 2, -1]], np.float32)


def test_keep_alive_serves_a_sequence_and_connection_close_ends_it(conn: Conn) -> None:
    for i in range(3):
        conn.send(infer_request(X + i))
        np.testing.assert_allclose(probabilities(conn.response(), 2), expected(X + i), rtol=1e-5)
    conn.send(infer_request(X, "Connection: close\r\n"))
    status, headers, _ = conn.response()
    assert status == 200 and headers["connection"] == "close"
    assert conn.closed_by_server()


def test_pipelined_requests_are_answered_in_order(conn: Conn) -> None:
    rows = [X[:1] * i for i in range(1, 4)]
    get = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"
    conn.send(b"".join(infer_request(r) for r in rows) + get)  # all in one send
    for r in rows:
        np.testing.assert_allclose(probabilities(conn.response(), 1), expected(r), rtol=1e-5)
    status, _, body = conn.response()
    assert status == 200 and json.loads(body) == {"live": True}


def test_http10_closes_unless_asked_to_keep_alive(server: HttpServer) -> None:
    c = Conn(server.server_port)
    try:
        c.send(b"GET /v2/health/live HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        status, headers, _ = c.response()
        assert status == 200 and headers["connection"] == "keep-alive"
        c.send(b"GET /v2/health/live HTTP/1.0\r\n\r\n")
        assert c.response()[0] == 200
        assert c.closed_by_server()
    finally:
        c.close()


@pytest.mark.parametrize(
    ("request_bytes", "status", "message"),
    [
        (b"GARBAGE\r\n\r\n", 400, "malformed request line"),
        (b"GET  /v2 HTTP/1.1\r\n\r\n", 400, "malformed request line"),
        (b"GET /v2 HTTP/1.1 extra\r\n\r\n", 400, "malformed request line"),
        (b"GET /v2 HTTP/2.0\r\n\r\n", 505, "HTTP/2.0"),
        (b"GET v2 HTTP/1.1\r\n\r\n", 400, "is not a path"),
        (b"GET /v2 HTTP/1.1\r\nno colon here\r\n\r\n", 400, "malformed header field"),
        (b"GET /v2 HTTP/1.1\r\nName : v\r\n\r\n", 400, "malformed header field"),
        (b"GET /v2 HTTP/1.1\r\nA: b\r\n  folded\r\n\r\n", 400, "malformed header field"),
        (b"POST /v1/infer HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}", 400, "twice"),
        (b"POST /v1/infer HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400, "not a non-negative integer"),
        (b"POST /v1/infer HTTP/1.1\r\nContent-Length: 1e3\r\n\r\n", 400, "not a non-negative integer"),
        (f"POST {INFER} HTTP/1.1\r\nHost: x\r\n\r\n{{}}".encode(), 411, "without Content-Length"),
        (f"POST {INFER} HTTP/1.1\r\nContent-Length: {MAX_BODY + 1}\r\n\r\n".encode(), 413, "body over"),
        (b"POST /v1/infer HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501, "Transfer-Encoding 'gzip'"),
        (b"POST /v1/infer HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400, "bad chunk size"),
        (b"POST /v1/infer HTTP/1.1\r\nContent-Length: 2\r\nExpect: magic\r\n\r\n{}", 417, "Expect 'magic'"),
    ],
)
def test_malformed_requests_get_a_problem_and_the_connection_closes(
    conn: Conn, request_bytes: bytes, status: int, message: str
) -> None:
    conn.send(request_bytes)
    reply = conn.response()
    assert reply[0] == status
    assert message in problem(reply)["error"]
    assert reply[1]["connection"] == "close"
    assert conn.closed_by_server()


def test_oversized_header_fields_are_431(conn: Conn) -> None:
    conn.send(b"GET /v2 HTTP/1.1\r\nX-Big: " + b"a" * (MAX_HEAD + 10) + b"\r\n\r\n")
    reply = conn.response()
    assert reply[0] == 431 and "header fields over" in problem(reply)["error"]
    assert conn.closed_by_server()


def test_a_large_binary_body_arrives_whole(conn: Conn) -> None:
    x = np.random.default_rng(0).standard_normal((300_000, 4)).astype(np.float32)  # ~7 MB in, ~3.6 MB out
    conn.send(infer_request(x))
    np.testing.assert_allclose(probabilities(conn.response(), len(x)), expected(x), rtol=1e-4, atol=1e-6)


def test_a_chunked_body_is_reassembled(conn: Conn) -> None:
    whole = infer_request(X, "Transfer-Encoding: chunked\r\n", length=False)
    head, _, body = whole.partition(b"\r\n\r\n")
    chunks = [body[i : i + 7] for i in range(0, len(body), 7)]
    encoded = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\nX-Trailer: t\r\n\r\n"
    conn.send(head + b"\r\n\r\n" + encoded)
    np.testing.assert_allclose(probabilities(conn.response(), 2), expected(X), rtol=1e-5)
    conn.send(b"GET /healthz HTTP/1.1\r\n\r\n")  # the connection is still in step
    assert conn.response()[0] == 200


def test_expect_100_continue_gets_an_interim_reply_before_the_body(conn: Conn) -> None:
    whole = infer_request(X, "Expect: 100-continue\r\n")
    head, _, body = whole.partition(b"\r\n\r\n")
    conn.send(head + b"\r\n\r\n")
    assert conn.file.readline() == b"HTTP/1.1 100 Continue\r\n" and conn.file.readline() == b"\r\n"
    conn.send(body)
    np.testing.assert_allclose(probabilities(conn.response(), 2), expected(X), rtol=1e-5)


def test_empty_lines_before_a_request_and_absolute_form_targets_are_accepted(conn: Conn) -> None:
    conn.send(b"\r\n\r\nGET http://127.0.0.1/v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    status, _, body = conn.response()
    assert status == 200 and json.loads(body) == {"live": True}


def test_head_gets_the_fields_without_the_body(conn: Conn) -> None:
    conn.send(b"HEAD /healthz HTTP/1.1\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n")
    status_line = conn.file.readline()
    assert b" 501 " in status_line
    while conn.file.readline() != b"\r\n":
        pass
    status, _, body = conn.response()  # the next reply follows at once: no body was sent for HEAD
    assert status == 200 and json.loads(body)["status"] == "ok"


def test_server_close_ends_kept_alive_connections(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(model_bytes())
    runtime = ModelRuntime()
    runtime.swap(MODEL, 7, "0" * 64, path)
    server = make_server(runtime, "127.0.0.1", 0)
    serve_in_thread(server)
    c = Conn(server.server_port)
    try:
        c.send(b"GET /healthz HTTP/1.1\r\n\r\n")
        assert c.response()[0] == 200
        server.shutdown()
        server.server_close()
        assert c.closed_by_server()
    finally:
        c.close()


def test_parse_head_lowercases_names_and_joins_repeated_fields() -> None:
    method, path, minor, headers = parse_head(
        b"POST /v2/x?y=1 HTTP/1.1\r\nHost: h\r\nAccept: a\r\naccept:  b \r\nContent-Length: 3\r\ncontent-length: 3"
    )
    assert (method, path, minor) == ("POST", "/v2/x?y=1", 1)
    assert headers == {"host": "h", "accept": "a, b", "content-length": "3"}


@pytest.mark.parametrize(
    "head",
    [b"GET /v2 HTTP/1.1\r\nHost: a\r\nHost: b", b"GET /v2 HTTP/1.1\r\nX: a\x00b", b"GET /v2 HTTP/1.x"],
)
def test_parse_head_refuses(head: bytes) -> None:
    with pytest.raises(HttpError) as err:
        parse_head(head)
    assert err.value.status == 400


def test_one_header_again_with_new_tensors_gives_new_results_and_checks_the_length(conn: Conn) -> None:
    rng = np.random.default_rng(1)
    for _ in range(4):  # the same JSON header each time: the second and later take the kept plan
        x = rng.standard_normal((2, 4)).astype(np.float32)
        conn.send(infer_request(x))
        np.testing.assert_allclose(probabilities(conn.response(), 2), expected(x), rtol=1e-5)
    whole = infer_request(X)
    head, _, body = whole.partition(b"\r\n\r\n")
    short = head.replace(f"Content-Length: {len(body)}".encode(), f"Content-Length: {len(body) - 8}".encode())
    conn.send(short + b"\r\n\r\n" + body[:-8])  # same header, one tensor 8 bytes short
    reply = conn.response()
    assert reply[0] == 400 and "runs past the body's binary part" in problem(reply)["error"]


def test_a_header_kept_for_one_model_is_checked_again_on_the_next(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Softmax", ["x"], ["probabilities"], axis=1)],
        "only-x",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 4])],
    )
    (tmp_path / "m.onnx").write_bytes(model_bytes())
    (tmp_path / "only_x.onnx").write_bytes(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()
    )
    runtime = ModelRuntime()
    runtime.swap(MODEL, 7, "0" * 64, tmp_path / "m.onnx")
    server = make_server(runtime, "127.0.0.1", 0)
    serve_in_thread(server)
    c = Conn(server.server_port)
    try:
        for _ in range(2):
            c.send(infer_request(X))
            np.testing.assert_allclose(probabilities(c.response(), 2), expected(X), rtol=1e-5)
        runtime.swap(MODEL, 7, "1" * 64, tmp_path / "only_x.onnx")
        c.send(infer_request(X))  # the same header bytes: the new session has no input k
        reply = c.response()
        assert reply[0] == 400 and "input 'k': the model has no such input" in problem(reply)["error"]
    finally:
        c.close()
        server.shutdown()
        server.server_close()
