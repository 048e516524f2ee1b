"""HTTP routes of the Open Inference Protocol (KServe v2 / Triton REST) in the local API (``api``).

GET /v2, /v2/health/live, /v2/health/ready, /v2/models/{name}[/versions/{v}][/ready]; POST
/v2/models/{name}[/versions/{v}]/infer (JSON tensors and the binary tensor extension). Errors are
``{"error": "..."}`` as the protocol says (plus the RFC 7807 fields), with a 4xx status for client input.
The protocol itself (tensors, metadata) is in ``edge_agent.runtime.v2``.
"""

from __future__ import annotations

import json
import zlib
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote

from edge_agent import __version__
from edge_agent.runtime import v2
from edge_agent.runtime.hooks import InferenceService

if TYPE_CHECKING:
    from edge_agent.lifecycle import Lifecycle

PREFIX = "/v2"
HEADER_LENGTH = "Inference-Header-Content-Length"
MAX_INFLATED = 64 * 1024 * 1024  # a compressed body may not inflate past the agent's body limit
_TITLES = {
    400: "Bad request",
    403: "Device revoked",
    404: "Not found",
    405: "Method not allowed",
    413: "Payload too large",
    415: "Unsupported media type",
    503: "Service unavailable",
}


class Headers(Protocol):
    """Request headers, looked up case-insensitively (``http.server``'s ``Message``)."""

    def get(self, name: str, default: None = None) -> str | None: ...


Reply = tuple[int, dict[str, str], bytes]
"""Status, extra headers (Content-Type among them), body."""


def matches(path: str) -> bool:
    path = path.split("?", 1)[0]
    return path == PREFIX or path.startswith(PREFIX + "/")


def _json(status: int, body: dict[str, Any]) -> Reply:
    return status, {"Content-Type": "application/json"}, json.dumps(body).encode()


def error(status: int, message: str) -> Reply:
    body = {
        "error": message,
        "type": "about:blank",
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": message,
    }
    return status, {"Content-Type": "application/problem+json"}, json.dumps(body).encode()


def _model_path(parts: list[str]) -> tuple[str, str | None, list[str]] | None:
    """``models/{name}[/versions/{v}]/rest`` -> (name, version, rest); None when it is not one."""
    if len(parts) < 2 or parts[0] != "models" or not parts[1]:
        return None
    name, rest = unquote(parts[1]), parts[2:]
    version = None
    if rest[:1] == ["versions"]:
        if len(rest) < 2 or not rest[1]:
            return None
        version, rest = unquote(rest[1]), rest[2:]
    return name, version, rest


class V2Routes:
    """The v2 routes on the agent's inference service; ``lifecycle``: inference refused once revoked."""

    def __init__(self, service: InferenceService, lifecycle: Lifecycle | None = None) -> None:
        self.service, self.lifecycle = service, lifecycle

    @property
    def _serving(self) -> bool:
        return self.lifecycle is None or self.lifecycle.serving

    def handle(self, method: str, path: str, headers: Headers, body: bytes) -> Reply:
        parts = path.split("?", 1)[0][len(PREFIX) :].strip("/").split("/")
        parts = [] if parts == [""] else parts
        active = self.service.runtime.active
        if parts in ([], ["health", "live"], ["health", "ready"]):
            if method != "GET":
                return error(405, f"{method} {path}: only GET")
            if not parts:
                return _json(200, v2.server_metadata(__version__))
            if parts[1] == "live":
                return _json(200, {"live": True})
            ready = active is not None and self._serving
            return _json(200 if ready else 503, {"ready": ready})
        route = _model_path(parts)
        if route is None:
            return error(404, f"no route {path}")
        name, version, rest = route
        if rest not in ([], ["ready"], ["infer"]):
            return error(404, f"no route {path}")
        wanted = "POST" if rest == ["infer"] else "GET"
        if method != wanted:
            return error(405, f"{method} {path}: only {wanted}")
        try:
            model = v2.resolve(active, name, version)
            if rest == ["ready"]:
                return _json(200 if self._serving else 503, {"name": name, "ready": self._serving})
            if not rest:
                return _json(200, v2.model_metadata(model))
            if not self._serving:
                return error(403, "the controller revoked this device; it serves no model")
            response = v2.infer(self.service, name, version, _decoded(headers, body), _header_length(headers))
        except v2.V2Error as exc:
            return error(exc.status, str(exc))
        if response.header_length is None:
            return 200, {"Content-Type": "application/json"}, response.header
        return (
            200,
            {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(response.header_length)},
            b"".join([response.header, *response.binary]),
        )


def _header_length(headers: Headers) -> int | None:
    value = headers.get(HEADER_LENGTH)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise v2.V2Error(400, f"{HEADER_LENGTH} {value!r} is not an integer") from None


def _decoded(headers: Headers, body: bytes) -> bytes:
    encoding = (headers.get("Content-Encoding") or "identity").strip().lower()
    if encoding in ("gzip", "deflate"):
        inflate = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
        try:
            data = inflate.decompress(body, MAX_INFLATED)
        except zlib.error as exc:
            raise v2.V2Error(400, f"body is not valid {encoding}: {exc}") from exc
        if inflate.unconsumed_tail:
            raise v2.V2Error(413, f"body inflates to over {MAX_INFLATED} bytes")
        if not inflate.eof:
            raise v2.V2Error(400, f"body is not valid {encoding}: truncated")
        return data
    if encoding != "identity":
        raise v2.V2Error(415, f"Content-Encoding {encoding!r} (accepted: gzip, deflate, identity)")
    return body
