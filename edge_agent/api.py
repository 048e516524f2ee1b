"""Local inference API on loopback, standard library only (``pip install fedge[agent]`` stays small).

GET /healthz, GET /v1/model (active model id, version, sha256), GET /v1/status (revoked or not,
certificate; ``edge_agent.lifecycle``), POST /v1/infer with
``{inputs: {name: list}}`` or ``{image: base64}`` / ``{images: [...]}`` (see ``runtime.hooks``);
``/v1/online/...`` when online learners are configured (``edge_agent.online.routes``); ``/v2/...``: the
Open Inference Protocol (KServe v2, ``edge_agent.api_v2``). HTTP/1.1 keep-alive with TCP_NODELAY (no
Nagle / delayed-ACK stalls on a reused connection).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from edge_agent.api_v2 import V2Routes
from edge_agent.api_v2 import matches as v2_matches
from edge_agent.process import Service
from edge_agent.runtime.hooks import BadRequest, InferenceService
from edge_agent.runtime.session import InferenceError, ModelRuntime

if TYPE_CHECKING:
    from edge_agent.lifecycle import Lifecycle
    from edge_agent.online.routes import OnlineRoutes

MAX_BODY = 64 * 1024 * 1024


def make_server(
    runtime: ModelRuntime,
    host: str = "127.0.0.1",
    port: int = 0,
    service: InferenceService | None = None,
    online: OnlineRoutes | None = None,
    lifecycle: Lifecycle | None = None,
) -> ThreadingHTTPServer:
    """A server bound to ``host:port`` (port 0: any free one); call ``serve_forever`` to run it.
    ``lifecycle``: ``GET /v1/status`` (revoked or not, certificate), and inference refused once revoked
    (unless it keeps serving)."""
    svc = service or InferenceService(runtime)
    v2_routes = V2Routes(svc, lifecycle)

    class Handler(BaseHTTPRequestHandler):
        server_version = "fedge-agent"
        protocol_version = "HTTP/1.1"  # keep-alive: every reply carries Content-Length
        disable_nagle_algorithm = True  # TCP_NODELAY on each connection

        def log_message(self, format: str, *args: Any) -> None:
            return

        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            ctype = "application/problem+json" if status >= 400 else "application/json"
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _problem(self, status: int, title: str, detail: str) -> None:
            if status == 413:
                self.close_connection = True  # the body was not read: the connection cannot be reused
            self._send(status, {"type": "about:blank", "title": title, "status": status, "detail": detail})

        def _v2(self, method: str) -> None:
            body = b""
            if method == "POST":
                size = int(self.headers.get("Content-Length") or 0)
                if size > MAX_BODY:
                    self._problem(413, "Payload too large", f"body over {MAX_BODY} bytes")
                    return
                body = self.rfile.read(size)
            status, headers, data = v2_routes.handle(method, self.path, self.headers, body)
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self._headers_buffer.append(b"\r\n" + data)  # type: ignore[attr-defined]
            self.flush_headers()  # headers and body in one send

        def do_GET(self) -> None:
            if v2_matches(self.path):
                self._v2("GET")
                return
            if online is not None and online.matches(self.path):
                self._send(*online.handle("GET", self.path))
                return
            active = runtime.active
            if self.path == "/healthz":
                self._send(200, {"status": "ok", "model_loaded": active is not None})
            elif self.path == "/v1/status" and lifecycle is not None:
                model = None if active is None else {"model_id": active.model_id, "version": active.version}
                self._send(200, {**lifecycle.status(), "model": model})
            elif self.path == "/v1/model":
                if active is None:
                    self._problem(404, "Not found", "no model is active on this device yet")
                else:
                    self._send(
                        200, {"model_id": active.model_id, "version": active.version, "sha256": active.sha256}
                    )
            else:
                self._problem(404, "Not found", f"no route {self.path}")

        def do_POST(self) -> None:
            if v2_matches(self.path):
                self._v2("POST")
                return
            if online is not None and online.matches(self.path):
                size = int(self.headers.get("Content-Length") or 0)
                if size > MAX_BODY:
                    self._problem(413, "Payload too large", f"body over {MAX_BODY} bytes")
                    return
                self._send(*online.handle("POST", self.path, self.rfile.read(size)))
                return
            if self.path != "/v1/infer":
                self._problem(404, "Not found", f"no route {self.path}")
                return
            if lifecycle is not None and not lifecycle.serving:
                self._problem(403, "Device revoked", "the controller revoked this device; it serves no model")
                return
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self._problem(413, "Payload too large", f"body over {MAX_BODY} bytes")
                return
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except ValueError as exc:
                self._problem(422, "Unprocessable content", f"body is not JSON: {exc}")
                return
            try:
                response = svc.handle(body)
            except BadRequest as exc:
                self._problem(422, "Unprocessable content", str(exc))
                return
            except InferenceError as exc:
                status = 503 if runtime.active is None else 422
                self._problem(status, "Inference failed", str(exc))
                return
            self._send(200, response)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def serve_in_thread(server: ThreadingHTTPServer) -> threading.Thread:
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
        self.server: ThreadingHTTPServer | None = None
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
