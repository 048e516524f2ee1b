"""Inference requests with pre-/post-processing hooks (the seed's object-detection pattern: an image in,
a decision out), shared by the local HTTP API and the MQTT request/response topics.

A request is either raw tensors, ``{"inputs": {name: nested list}}``, or images,
``{"image": "<base64 PNG/JPEG>"}`` / ``{"images": [...]}``. Images go through the pre-processing hook
(default: decode, grey or RGB by the model's channel count, resize to its input size, scale to [0, 1],
NCHW float32; ``"invert": true`` for dark-on-light pictures); outputs through the post-processing hook
(default: for a 2-D ``[batch, classes]`` output, the top class and its score per row).

Custom hooks are ``module:function`` paths (``FEDGE_AGENT_PREPROCESS`` / ``FEDGE_AGENT_POSTPROCESS``):
``preprocess(request: dict, inputs: list[NodeArg]) -> dict[name, ndarray]`` and
``postprocess(request: dict, outputs: dict[name, list]) -> dict`` (merged into the response).
"""

from __future__ import annotations

import base64
import binascii
import importlib
import io
import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from edge_agent.runtime.session import InferenceError, ModelRuntime

Preprocess = Callable[[dict[str, Any], list[Any]], dict[str, Any]]
Postprocess = Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]
MAX_IMAGES = 256


class BadRequest(ValueError):
    """The request itself is malformed (HTTP 422 / an error response on MQTT)."""


class InferenceObserver(Protocol):
    """Told about every successful inference (the agent's monitor); must return at once, never raise."""

    def observe_inference(
        self, model_id: str | None, version: int | None, inputs: Any, outputs: Any, seconds: float
    ) -> None: ...


def load_hook(path: str) -> Callable[..., Any]:
    """Import ``module:function``."""
    module, _, name = path.partition(":")
    if not module or not name:
        raise ValueError(f"hook must be 'module:function', not {path!r}")
    func = getattr(importlib.import_module(module), name, None)
    if not callable(func):
        raise ValueError(f"{path!r} is not a callable")
    return func  # type: ignore[no-any-return]


def _decode(b64: Any) -> Any:
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - Pillow is in the agent extra
        raise InferenceError("image input needs Pillow: pip install 'fedge[agent]'") from exc
    if not isinstance(b64, str):
        raise BadRequest("an image must be a base64 string")
    try:
        raw = base64.b64decode(b64, validate=True)
        img = Image.open(io.BytesIO(raw))
        img.load()
    except (binascii.Error, ValueError) as exc:
        raise BadRequest(f"image is not valid base64: {exc}") from exc
    except OSError as exc:
        raise BadRequest(f"image cannot be decoded: {exc}") from exc
    return img


def image_preprocess(request: dict[str, Any], inputs: list[Any]) -> dict[str, Any]:
    """Default pre-processing: images -> the model's single NCHW float input in [0, 1]."""
    images = request.get("images") if "images" in request else [request.get("image")]
    if not isinstance(images, list) or not images or len(images) > MAX_IMAGES:
        raise BadRequest(f"'images' must be a list of 1 to {MAX_IMAGES} base64 strings")
    if len(inputs) != 1:
        raise BadRequest("image input needs a model with exactly one input (or a custom preprocess hook)")
    shape = list(inputs[0].shape)
    if len(shape) != 4:
        raise BadRequest(f"image input needs an NCHW model input, this one is {shape}")
    channels, height, width = shape[1], shape[2], shape[3]
    if not all(isinstance(d, int) for d in (channels, height, width)):
        raise BadRequest(f"the model's input {shape} has no fixed channels/height/width to resize to")
    from PIL import Image

    batch = []
    for b64 in images:
        img = (
            _decode(b64)
            .convert("L" if channels == 1 else "RGB")
            .resize((width, height), Image.Resampling.BILINEAR)
        )
        arr = np.asarray(img, dtype=np.float32) / 255.0
        if request.get("invert"):
            arr = 1.0 - arr
        batch.append(arr[None] if channels == 1 else arr.transpose(2, 0, 1))
    return {inputs[0].name: np.stack(batch).astype(np.float32)}


def classification_postprocess(_request: dict[str, Any], outputs: dict[str, Any]) -> dict[str, Any]:
    """Default post-processing: top class and score per row of a 2-D output (classifiers)."""
    if len(outputs) != 1:
        return {}
    values = np.asarray(next(iter(outputs.values())))
    if values.ndim != 2 or values.dtype.kind != "f":
        return {}
    top = values.argmax(axis=1)
    return {"predictions": [{"class": int(k), "score": float(values[i, k])} for i, k in enumerate(top)]}


class InferenceService:
    """Turns a request into model outputs (plus post-processed fields) on the active model."""

    def __init__(
        self,
        runtime: ModelRuntime,
        preprocess: Preprocess | None = None,
        postprocess: Postprocess | None = None,
    ) -> None:
        self.runtime = runtime
        self.preprocess = preprocess or image_preprocess
        self.postprocess = postprocess or classification_postprocess
        self.observer: InferenceObserver | None = None
        """Set by the monitor: inputs, outputs and the model call's latency (a non-blocking hand-over)."""

    @classmethod
    def from_paths(cls, runtime: ModelRuntime, pre: str | None, post: str | None) -> InferenceService:
        return cls(runtime, load_hook(pre) if pre else None, load_hook(post) if post else None)

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        """Run one request; raises BadRequest (malformed) or InferenceError (no model, model error)."""
        if not isinstance(request, dict):
            raise BadRequest("a request must be a JSON object")
        active = self.runtime.active
        if "inputs" in request:
            inputs = request["inputs"]
            if not isinstance(inputs, dict):
                raise BadRequest("'inputs' must be an object {name: nested list}")
        elif "image" in request or "images" in request:
            if active is None:
                raise InferenceError("no model is active on this device yet")
            inputs = self.preprocess(request, list(active.session.get_inputs()))
        else:
            raise BadRequest(
                "expected {'inputs': {name: nested list}} or {'image': base64} / {'images': [...]}"
            )
        started = time.perf_counter()
        outputs = self.runtime.infer(inputs)
        seconds = time.perf_counter() - started
        response: dict[str, Any] = {"outputs": outputs}
        response.update(self.postprocess(request, outputs))
        active = self.runtime.active
        if self.observer is not None:
            self.observer.observe_inference(
                active.model_id if active else None,
                active.version if active else None,
                inputs,
                outputs,
                seconds,
            )
        response["model_id"] = active.model_id if active else None
        response["version"] = active.version if active else None
        return response
