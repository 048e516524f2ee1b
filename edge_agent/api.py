"""Local inference API on loopback, standard library only (``pip install fedge[agent]`` stays small).

GET /healthz, GET /v1/model (active model id, version, sha256), GET /v1/status (revoked or not,
certificate; ``edge_agent.lifecycle``), POST /v1/infer with
``{inputs: {name: list}}`` or ``{image: base64}`` / ``{images: [...]}`` (see ``runtime.hooks``);
``/v1/online/...`` when online learners are configured (``edge_agent.online.routes``); ``/v2/...``: the
Open Inference Protocol (KServe v2, ``edge_agent.api_v2``). All on ``api_v2.HttpServer``: HTTP/1.1
keep-alive with TCP_NODELAY (no Nagle / delayed-ACK stalls on a reused connection), headers parsed by
hand rather than by ``http.server``'s ``email`` parser.
"""

from __future__ import annotations

import json
import threading
from typing import TYPE_CHECKING, Any

from edge_agent.api_v2 import HttpServer, Reply, Request, V2Routes
from edge_agent.api_v2 import matches as v2_matches
from edge_agent.process import Service
from edge_agent.runtime.hooks import BadRequest, InferenceService
from edge_agent.runtime.session import InferenceError, ModelRuntime

if TYPE_CHECKING:
    from edge_agent.lifecycle import Lifecycle
    from edge_agent.online.routes import OnlineRoutes


def _reply(status: int, body: dict[str, Any]) -> Reply:
    ctype = "application/problem+json" if status >= 400 else "application/json"
    return status, {"Content-Type": ctype}, json.dumps(body).encode()


def _problem(status: int, title: str, detail: str) -> Reply:
    return _reply(status, {"type": "about:blank", "title": title, "status": status, "detail": detail})


def make_server(
    runtime: ModelRuntime,
    host: str = "127.0.0.1",
    port: int = 0,
    service: InferenceService | None = None,
    online: OnlineRoutes | None = None,
    lifecycle: Lifecycle | None = None,
) -> HttpServer:
    """A server bound to ``host:port`` (port 0: any free one); call ``serve_forever`` to run it.
    ``lifecycle``: ``GET /v1/status`` (revoked or not, certificate), and inference refused once revoked
    (unless it keeps serving)."""
    svc = service or InferenceService(runtime)
    v2_routes = V2Routes(svc, lifecycle)

    def get(path: str) -> Reply:
        active = runtime.active
        if path == "/healthz":
            return _reply(200, {"status": "ok", "model_loaded": active is not None})
        if path == "/v1/status" and lifecycle is not None:
            model = None if active is None else {"model_id": active.model_id, "version": active.version}
            return _reply(200, {**lifecycle.status(), "model": model})
        if path == "/v1/model":
            if active is None:
                return _problem(404, "Not found", "no model is active on this device yet")
            return _reply(
                200, {"model_id": active.model_id, "version": active.version, "sha256": active.sha256}
            )
        return _problem(404, "Not found", f"no route {path}")

    def infer_v1(body: bytes) -> Reply:
        if lifecycle is not None and not lifecycle.serving:
            return _problem(403, "Device revoked", "the controller revoked this device; it serves no model")
        try:
            request = json.loads(body or b"{}")
        except ValueError as exc:
            return _problem(422, "Unprocessable content", f"body is not JSON: {exc}")
        try:
            return _reply(200, svc.handle(request))
        except BadRequest as exc:
            return _problem(422, "Unprocessable content", str(exc))
        except InferenceError as exc:
            status = 503 if runtime.active is None else 422
            return _problem(status, "Inference failed", str(exc))

    def app(request: Request) -> Reply:
        method, path = request.method, request.path
        if v2_matches(path):
            return v2_routes.handle(method, path, request.headers, request.body)
        if method not in ("GET", "POST"):
            return _problem(501, "Not implemented", f"method {method}")
        if online is not None and online.matches(path):
            return _reply(*online.handle(method, path, request.body))
        if method == "GET":
            return get(path)
        if path != "/v1/infer":
            return _problem(404, "Not found", f"no route {path}")
        return infer_v1(request.body)

    return HttpServer((host, port), app)


def serve_in_thread(server: HttpServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, name="fedge-agent-api", daemon=True)
    thread.start()
    return thread


class LocalApi(Service):
    """The local inference API as a service of the agent process: ``start`` binds (an address in use
    fails the start), ``stop`` shuts the server down and closes its socket."""

    name = "local-api"

    def __init__(
        self,
        runtime: ModelRuntime,
        host: str,
        port: int,
        service: InferenceService | None = None,
        online: OnlineRoutes | None = None,
        lifecycle: Lifecycle | None = None,
    ) -> None:
        self.runtime, self.host, self.port, self.service = runtime, host, port, service
        self.online, self.lifecycle = online, lifecycle
        self.server: HttpServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http://host:port`` it listens on (the bound port when started with port 0)."""
        port = self.server.server_port if self.server is not None else self.port
        return f"http://{self.host}:{port}"

    def start(self) -> None:
        self.server = make_server(
            self.runtime, self.host, self.port, self.service, self.online, self.lifecycle
        )
        self._thread = serve_in_thread(self.server)

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def healthy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()
