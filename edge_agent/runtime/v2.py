"""The Open Inference Protocol (KServe v2 / Triton REST) on the active model, without the HTTP part.

Metadata (names, shapes with -1 for dynamic dimensions, v2 datatypes mapped from ORT types), and one
inference request: a JSON header (``inputs`` with ``data`` or ``parameters.binary_data_size``) optionally
followed by the raw tensors of the binary tensor extension (``Inference-Header-Content-Length`` says where
the JSON ends); outputs as JSON ``data`` or, when asked for (``parameters.binary_data_output`` or an
output's ``parameters.binary_data``), as raw bytes after the JSON header. The model name is the deployed
model's id, its version the registry version.

A client sends the same JSON header again and again (one batch shape, binary tensors): per session, a
checked all-binary header is kept (by its bytes) with where each tensor lies, and an all-binary reply's
JSON header by output shapes, so such a request costs no JSON parse or write.
"""

from __future__ import annotations

import json
import math
import struct
import time
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_agent.runtime.hooks import InferenceService
from edge_agent.runtime.session import Active, InferenceError

__all__ = ["V2Error", "V2Response", "infer", "model_metadata", "server_metadata"]

# ORT type -> v2 datatype; v2 datatype -> numpy dtype (BYTES: object arrays of bytes).
ORT_TO_V2 = {
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(float16)": "FP16",
    "tensor(int64)": "INT64",
    "tensor(int32)": "INT32",
    "tensor(int16)": "INT16",
    "tensor(int8)": "INT8",
    "tensor(uint64)": "UINT64",
    "tensor(uint32)": "UINT32",
    "tensor(uint16)": "UINT16",
    "tensor(uint8)": "UINT8",
    "tensor(bool)": "BOOL",
    "tensor(string)": "BYTES",
}
V2_DTYPES: dict[str, Any] = {
    "FP32": np.float32,
    "FP64": np.float64,
    "FP16": np.float16,
    "INT64": np.int64,
    "INT32": np.int32,
    "INT16": np.int16,
    "INT8": np.int8,
    "UINT64": np.uint64,
    "UINT32": np.uint32,
    "UINT16": np.uint16,
    "UINT8": np.uint8,
    "BOOL": np.bool_,
    "BYTES": np.object_,
}
_NUMPY_TO_V2 = {np.dtype(t).str: name for name, t in V2_DTYPES.items() if name != "BYTES"}
EXTENSIONS = ["binary_tensor_data"]


class V2Error(Exception):
    """A request the protocol refuses: ``status`` (4xx) and a message for ``{"error": ...}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class V2Response:
    """An inference response: the JSON header and the raw output tensors that follow it (may be empty)."""

    header: bytes
    binary: list[bytes]

    @property
    def header_length(self) -> int | None:
        """``Inference-Header-Content-Length`` when binary outputs follow, else None (plain JSON)."""
        return len(self.header) if self.binary else None


def server_metadata(version: str) -> dict[str, Any]:
    return {"name": "fedge-agent", "version": version, "extensions": EXTENSIONS}


def _v2_type(ort_type: str) -> str:
    return ORT_TO_V2.get(ort_type, ort_type)


def _shape(shape: Any) -> list[int]:
    return [d if isinstance(d, int) and d >= 0 else -1 for d in shape]


def resolve(active: Active | None, name: str, version: str | None) -> Active:
    """The active model if ``name`` (and ``version``, when given) designate it; else 404."""
    if active is None or active.model_id != name:
        raise V2Error(404, f"unknown model '{name}'")
    if version is not None and version != str(active.version):
        raise V2Error(404, f"unknown version '{version}' of model '{name}' (served: {active.version})")
    return active


def model_metadata(active: Active) -> dict[str, Any]:
    session = active.session
    return {
        "name": active.model_id,
        "versions": [str(active.version)],
        "platform": "onnxruntime_onnx",
        "inputs": [
            {"name": i.name, "datatype": _v2_type(i.type), "shape": _shape(i.shape)}
            for i in session.get_inputs()
        ],
        "outputs": [
            {"name": o.name, "datatype": _v2_type(o.type), "shape": _shape(o.shape)}
            for o in session.get_outputs()
        ],
    }


@dataclass(frozen=True, slots=True)
class _Binary:
    """Where one binary input lies in the body's binary part, and what it is."""

    name: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    offset: int
    count: int


@dataclass(frozen=True, slots=True)
class _Plan:
    """A checked request header whose inputs are all binary: the same header bytes again (a client
    sending batch after batch of one shape) skip the JSON parse and the checks."""

    inputs: tuple[_Binary, ...]
    binary_size: int
    names: list[str]
    as_binary: dict[str, bool]


@dataclass
class _SessionInfo:
    """What is kept per session while it lives: its signature, checked request headers (``MAX_PLANS``
    at most) and, per output dtypes and shapes, the JSON header of an all-binary reply."""

    inputs: dict[str, str]
    outputs: dict[str, str]
    plans: dict[bytes, _Plan]
    replies: dict[tuple[Any, ...], bytes]


MAX_PLANS = 64
_SESSIONS: weakref.WeakKeyDictionary[Any, _SessionInfo] = weakref.WeakKeyDictionary()


def _info(session: Any) -> _SessionInfo:
    """The session's ``_SessionInfo`` (asking ORT for its signature costs more than the rest of a batch-1
    request, so it is asked once)."""
    found = _SESSIONS.get(session)
    if found is None:
        found = _SessionInfo(
            {i.name: _v2_type(i.type) for i in session.get_inputs()},
            {o.name: _v2_type(o.type) for o in session.get_outputs()},
            {},
            {},
        )
        _SESSIONS[session] = found
    return found


def _split(body: bytes, header_length: int | None) -> tuple[bytes, memoryview]:
    """The body -> (JSON header, binary part)."""
    if header_length is None:
        header_length = len(body)
    if not 0 < header_length <= len(body):
        raise V2Error(
            400, f"Inference-Header-Content-Length {header_length} is outside the body ({len(body)} bytes)"
        )
    return body[:header_length], memoryview(body)[header_length:]


def _parse_header(header: bytes) -> dict[str, Any]:
    try:
        request = json.loads(header)
    except ValueError as exc:
        raise V2Error(400, f"the inference header is not JSON: {exc}") from exc
    if not isinstance(request, dict):
        raise V2Error(400, "the inference request must be a JSON object")
    return request


def _params(obj: dict[str, Any], where: str) -> dict[str, Any]:
    params = obj.get("parameters", {})
    if not isinstance(params, dict):
        raise V2Error(400, f"{where}: 'parameters' must be an object")
    return params


def _decode_bytes(raw: memoryview, count: int, where: str) -> np.ndarray:
    """BYTES in binary form: each element a 4-byte little-endian length, then that many bytes."""
    items: list[bytes] = []
    offset = 0
    for _ in range(count):
        if offset + 4 > len(raw):
            raise V2Error(400, f"{where}: BYTES data ends before element {len(items)}")
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise V2Error(400, f"{where}: BYTES element {len(items)} runs past the data")
        items.append(bytes(raw[offset : offset + size]))
        offset += size
    if offset != len(raw):
        raise V2Error(400, f"{where}: {len(raw) - offset} bytes left after {count} BYTES elements")
    return np.array(items, dtype=np.object_)


def _encode_bytes(array: np.ndarray) -> bytes:
    parts = []
    for item in array.ravel():
        data = item if isinstance(item, bytes) else str(item).encode()
        parts.append(struct.pack("<I", len(data)) + data)
    return b"".join(parts)


def _tensor(
    spec: Any, index: int, expected: dict[str, str], binary: memoryview, offset: int
) -> tuple[str, np.ndarray, int, _Binary | None]:
    """One request input -> (name, array, new offset into the binary part, where it lay there when it is
    a binary non-BYTES tensor)."""
    if not isinstance(spec, dict):
        raise V2Error(400, f"inputs[{index}] must be an object")
    name, datatype, shape = spec.get("name"), spec.get("datatype"), spec.get("shape")
    if not isinstance(name, str):
        raise V2Error(400, f"inputs[{index}]: 'name' must be a string")
    where = f"input '{name}'"
    if name not in expected:
        raise V2Error(400, f"{where}: the model has no such input (inputs: {sorted(expected)})")
    if datatype != expected[name]:
        raise V2Error(400, f"{where}: datatype {datatype!r}, the model expects {expected[name]}")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise V2Error(400, f"{where}: 'shape' must be a list of non-negative integers")
    count = math.prod(shape)
    dtype = V2_DTYPES[datatype]
    size = _params(spec, where).get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise V2Error(400, f"{where}: binary_data_size must be a non-negative integer")
        if offset + size > len(binary):
            raise V2Error(400, f"{where}: binary_data_size {size} runs past the body's binary part")
        raw = binary[offset : offset + size]
        if datatype == "BYTES":
            return name, _decode_bytes(raw, count, where).reshape(shape), offset + size, None
        little = np.dtype(dtype).newbyteorder("<")
        if size != count * little.itemsize:
            detail = f"{count} elements x {little.itemsize} bytes of {datatype}"
            raise V2Error(400, f"{where}: binary_data_size {size} != {detail}")
        placed = _Binary(name, little, tuple(shape), offset, count)
        return name, np.frombuffer(raw, dtype=little).reshape(shape), offset + size, placed
    if "data" not in spec:
        raise V2Error(400, f"{where}: neither 'data' nor parameters.binary_data_size")
    try:
        if datatype == "BYTES":
            array = np.array(
                [d.encode() if isinstance(d, str) else d for d in np.ravel(spec["data"])], np.object_
            )
        else:
            array = np.asarray(spec["data"], dtype=dtype).ravel()
    except (ValueError, TypeError, OverflowError) as exc:
        raise V2Error(400, f"{where}: data is not {datatype}: {exc}") from exc
    if array.size != count:
        raise V2Error(400, f"{where}: {array.size} elements of data for shape {shape} ({count} elements)")
    return name, array.reshape(shape), offset, None


def _requested(request: dict[str, Any], outputs: dict[str, str]) -> tuple[list[str], dict[str, bool]]:
    """Output names to compute and, per name, whether it goes back in binary form."""
    default_binary = _params(request, "request").get("binary_data_output", False)
    if not isinstance(default_binary, bool):
        raise V2Error(400, "parameters.binary_data_output must be true or false")
    asked = request.get("outputs")
    if asked is None:
        return list(outputs), dict.fromkeys(outputs, default_binary)
    if not isinstance(asked, list) or not asked:
        raise V2Error(400, "'outputs' must be a non-empty list of {name, parameters}")
    binary: dict[str, bool] = {}
    for index, spec in enumerate(asked):
        name = spec.get("name") if isinstance(spec, dict) else None
        if not isinstance(name, str) or name not in outputs:
            raise V2Error(400, f"outputs[{index}]: unknown output {name!r} (outputs: {list(outputs)})")
        params = _params(spec, f"output '{name}'")
        if "classification" in params:
            raise V2Error(400, f"output '{name}': the classification extension is not supported")
        flag = params.get("binary_data", default_binary)
        if not isinstance(flag, bool):
            raise V2Error(400, f"output '{name}': parameters.binary_data must be true or false")
        binary[name] = flag
    return list(binary), binary


def _check(
    request: dict[str, Any], info: _SessionInfo, binary: memoryview
) -> tuple[dict[str, np.ndarray], list[str], dict[str, bool], _Plan | None]:
    """A parsed request header -> (feed, output names, binary or not per output, its plan when every
    input is a binary non-BYTES tensor)."""
    specs = request.get("inputs")
    if not isinstance(specs, list):
        raise V2Error(400, "'inputs' must be a list of tensors {name, datatype, shape, data}")
    feed: dict[str, np.ndarray] = {}
    placed: list[_Binary] = []
    offset = 0
    for index, spec in enumerate(specs):
        key, array, offset, where = _tensor(spec, index, info.inputs, binary, offset)
        if key in feed:
            raise V2Error(400, f"input '{key}' is given twice")
        feed[key] = array
        if where is not None:
            placed.append(where)
    if offset != len(binary):
        raise V2Error(
            400, f"{len(binary) - offset} bytes after the last binary input (binary_data_size total {offset})"
        )
    missing = [n for n in info.inputs if n not in feed]
    if missing:
        raise V2Error(400, f"missing inputs {missing}")
    names, as_binary = _requested(request, info.outputs)
    plan = None
    if len(placed) == len(feed) and "id" not in request:
        plan = _Plan(tuple(placed), offset, names, as_binary)
    return feed, names, as_binary, plan


def _datatype(declared: str, array: np.ndarray) -> str:
    return declared if declared in V2_DTYPES else _NUMPY_TO_V2.get(array.dtype.str, "BYTES")


def _binary_reply(
    active: Active, info: _SessionInfo, names: list[str], results: dict[str, np.ndarray]
) -> V2Response:
    """Every output in binary form: the JSON header depends only on the outputs' dtypes and shapes, so it
    is written once per (dtypes, shapes) and kept."""
    arrays = [np.ascontiguousarray(results[n]) for n in names]
    types = [_datatype(info.outputs[n], a) for n, a in zip(names, arrays, strict=True)]
    raw = [
        _encode_bytes(a) if t == "BYTES" else a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
        for a, t in zip(arrays, types, strict=True)
    ]
    key = (*names, *types, *(a.shape for a in arrays), *map(len, raw))
    header = info.replies.get(key)
    if header is None:
        outputs = [
            {"name": n, "datatype": t, "shape": list(a.shape), "parameters": {"binary_data_size": len(r)}}
            for n, t, a, r in zip(names, types, arrays, raw, strict=True)
        ]
        reply = {"model_name": active.model_id, "model_version": str(active.version), "outputs": outputs}
        header = json.dumps(reply).encode()
        if len(info.replies) >= MAX_PLANS:
            info.replies.clear()
        info.replies[key] = header
    return V2Response(header, raw)


def infer(
    service: InferenceService, name: str, version: str | None, body: bytes, header_length: int | None
) -> V2Response:
    """Run one v2 inference request on the active model (raises V2Error with a 4xx status)."""
    active = resolve(service.runtime.active, name, version)
    header, binary = _split(body, header_length)
    info = _info(active.session)
    plan = info.plans.get(header) if header_length is not None else None
    request: dict[str, Any] | None = None
    if plan is not None and len(binary) == plan.binary_size:
        feed = {
            b.name: np.frombuffer(binary, b.dtype, b.count, b.offset).reshape(b.shape) for b in plan.inputs
        }
        names, as_binary = plan.names, plan.as_binary
    else:
        request = _parse_header(header)
        feed, names, as_binary, plan = _check(request, info, binary)
        if plan is not None and header_length is not None:
            if len(info.plans) >= MAX_PLANS:
                info.plans.clear()
            info.plans[header] = plan
    started = time.perf_counter()
    try:
        _, results = service.runtime.run(feed, names, active=active)
    except InferenceError as exc:
        raise V2Error(400, str(exc)) from exc
    seconds = time.perf_counter() - started
    if service.observer is not None:
        service.observer.observe_inference(active.model_id, active.version, feed, results, seconds)
    if all(as_binary.values()) and (request is None or "id" not in request):
        return _binary_reply(active, info, names, results)
    response: dict[str, Any] = {"model_name": active.model_id, "model_version": str(active.version)}
    if request is not None and "id" in request:
        response["id"] = request["id"]
    tensors: list[dict[str, Any]] = []
    raw: list[bytes] = []
    for out in names:
        array = results[out]
        datatype = _datatype(info.outputs[out], array)
        tensor: dict[str, Any] = {"name": out, "datatype": datatype, "shape": list(array.shape)}
        if as_binary[out]:
            data = (
                _encode_bytes(array)
                if datatype == "BYTES"
                else np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
            )
            tensor["parameters"] = {"binary_data_size": len(data)}
            raw.append(data)
        elif datatype == "BYTES":
            tensor["data"] = [
                x.decode(errors="replace") if isinstance(x, bytes) else str(x) for x in array.ravel()
            ]
        else:
            tensor["data"] = array.ravel().tolist()
        tensors.append(tensor)
    response["outputs"] = tensors
    return V2Response(json.dumps(response).encode(), raw)
