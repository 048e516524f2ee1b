"""HTTP routes of the Open Inference Protocol (KServe v2 / Triton REST) in the local API (``api``), and the
lean HTTP/1.1 server (``HttpServer``) the whole local API runs on.

GET /v2, /v2/health/live, /v2/health/ready, /v2/models/{name}[/versions/{v}][/ready]; POST
/v2/models/{name}[/versions/{v}]/infer (JSON tensors and the binary tensor extension). Errors are
``{"error": "..."}`` as the protocol says (plus the RFC 7807 fields), with a 4xx status for client input.
The protocol itself (tensors, metadata) is in ``edge_agent.runtime.v2``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import re
import socket
import socketserver
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from http.server import ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from edge_agent import __version__
from edge_agent.runtime import v2
from edge_agent.runtime.hooks import InferenceService

if TYPE_CHECKING:
    from edge_agent.lifecycle import Lifecycle

PREFIX = "/v2"
HEADER_LENGTH = "Inference-Header-Content-Length"
_HEADER_LENGTH = HEADER_LENGTH.lower()
MAX_INFLATED = 64 * 1024 * 1024  # a compressed body may not inflate past the agent's body limit
_TITLES = {
    400: "Bad request",
    403: "Device revoked",
    411: "Length required",
    404: "Not found",
    405: "Method not allowed",
    413: "Payload too large",
    415: "Unsupported media type",
    417: "Expectation failed",
    431: "Request header fields too large",
    500: "Internal server error",
    501: "Not implemented",
    503: "Service unavailable",
    505: "HTTP version not supported",
}


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


def _model_path(parts: tuple[str, ...]) -> tuple[str, str | None, tuple[str, ...]] | None:
    """``models/{name}[/versions/{v}]/rest`` -> (name, version, rest); None when it is not one."""
    if len(parts) < 2 or parts[0] != "models" or not parts[1]:
        return None
    name, rest = unquote(parts[1]), parts[2:]
    version = None
    if rest[:1] == ("versions",):
        if len(rest) < 2 or not rest[1]:
            return None
        version, rest = unquote(rest[1]), rest[2:]
    return name, version, rest


@functools.lru_cache(maxsize=256)
def _route(path: str) -> tuple[tuple[str, ...], tuple[str, str | None, tuple[str, ...]] | None]:
    """A request path -> (its parts after /v2, the model route when it is one); kept for the paths seen."""
    parts = tuple(path.split("?", 1)[0][len(PREFIX) :].strip("/").split("/"))
    parts = () if parts == ("",) else parts
    return parts, _model_path(parts)


class V2Routes:
    """The v2 routes on the agent's inference service; ``lifecycle``: inference refused once revoked."""

    def __init__(self, service: InferenceService, lifecycle: Lifecycle | None = None) -> None:
        self.service, self.lifecycle = service, lifecycle

    @property
    def _serving(self) -> bool:
        return self.lifecycle is None or self.lifecycle.serving

    def handle(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> Reply:
        """One request; ``headers`` keyed by lower-case field name."""
        parts, route = _route(path)
        active = self.service.runtime.active
        if parts in ((), ("health", "live"), ("health", "ready")):
            if method != "GET":
                return error(405, f"{method} {path}: only GET")
            if not parts:
                return _json(200, v2.server_metadata(__version__))
            if parts[1] == "live":
                return _json(200, {"live": True})
            ready = active is not None and self._serving
            return _json(200 if ready else 503, {"ready": ready})
        if route is None:
            return error(404, f"no route {path}")
        name, version, rest = route
        if rest not in ((), ("ready",), ("infer",)):
            return error(404, f"no route {path}")
        wanted = "POST" if rest == ("infer",) else "GET"
        if method != wanted:
            return error(405, f"{method} {path}: only {wanted}")
        try:
            model = v2.resolve(active, name, version)
            if rest == ("ready",):
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


def _header_length(headers: Mapping[str, str]) -> int | None:
    value = headers.get(_HEADER_LENGTH)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise v2.V2Error(400, f"{HEADER_LENGTH} {value!r} is not an integer") from None


def _decoded(headers: Mapping[str, str], body: bytes) -> bytes:
    encoding = (headers.get("content-encoding") or "identity").strip().lower()
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


# --- The HTTP/1.1 server the local API runs on --------------------------------------------------------
# ``http.server`` parses every request's headers with the ``email`` package (~0.1 ms a request, more than
# the rest of a batch-1 inference); this one reads the request line and header fields by hand from one
# buffer per connection (RFC 9112): keep-alive by default (``Connection: close`` and HTTP/1.0 honoured),
# pipelined requests served in order, Content-Length and chunked bodies, ``Expect: 100-continue``, and a
# 400 / 411 / 413 / 431 / 501 / 505 problem (then the connection is closed) for what it cannot take.

MAX_HEAD = 64 * 1024
"""Request line plus header fields, bytes; past it: 431."""
MAX_BODY = 64 * 1024 * 1024
"""Request body, bytes; past it: 413."""
_REASONS = {s.value: s.phrase for s in HTTPStatus}
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") (\S+) HTTP/(\d)\.(\d)")
_FIELD = re.compile(rb"(" + _TOKEN + rb"):[ \t]*([^\x00\r\n]*?)[ \t]*")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,15}")
_BODYLESS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS", "TRACE", "CONNECT"})
_DRAIN = 4 * 1024 * 1024  # what an error reply reads and drops before closing
_RECV = 64 * 1024  # per recv: a larger one costs a big allocation each call (~20 us at 256 KiB)
_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Request:
    """One parsed request: ``headers`` keyed by lower-case field name (repeated fields joined by ", ")."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


App = Callable[[Request], Reply]
"""What the server calls for each request (on the connection's thread)."""


class HttpError(Exception):
    """A request the HTTP layer refuses before any route sees it; the connection is closed after it."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Reader:
    """Buffered reads from one connection's socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buf = sock, bytearray()

    def _fill(self) -> None:
        chunk = self.sock.recv(_RECV)
        if not chunk:
            raise ConnectionResetError("the client closed the connection mid-request")
        self.buf += chunk

    def head(self) -> bytes | None:
        """The next request line and header fields (without the empty line); None at a clean end."""
        buf, start = self.buf, 0
        while True:
            found = _HEAD_END.search(buf, max(0, start - 3))
            if found is not None and found.start() > MAX_HEAD:
                raise HttpError(431, f"request line and header fields over {MAX_HEAD} bytes")
            if found is not None:
                head = bytes(buf[: found.start()])
                del buf[: found.end()]
                head = head.lstrip(b"\r\n")  # RFC 9112 2.2: empty lines before a request line are ignored
                if head:
                    return head
                start = 0
                continue
            if len(buf) > MAX_HEAD:
                raise HttpError(431, f"request line and header fields over {MAX_HEAD} bytes")
            start = len(buf)
            chunk = self.sock.recv(_RECV)
            if not chunk:
                return None
            buf += chunk

    def exact(self, size: int) -> bytes:
        buf = self.buf
        if len(buf) >= size:
            data = bytes(buf[:size])
            del buf[:size]
            return data
        out = bytearray(size)
        view = memoryview(out)
        got = len(buf)
        view[:got] = buf
        buf.clear()
        while got < size:
            n = self.sock.recv_into(view[got:])
            if n == 0:
                raise ConnectionResetError("the client closed the connection mid-body")
            got += n
        return bytes(out)

    def line(self) -> bytes:
        while (end := self.buf.find(b"\n")) < 0:
            if len(self.buf) > MAX_HEAD:
                raise HttpError(400, "a chunk-size or trailer line runs too long")
            self._fill()
        line = bytes(self.buf[:end]).rstrip(b"\r")
        del self.buf[: end + 1]
        return line

    def chunked(self) -> bytes:
        """A ``Transfer-Encoding: chunked`` body (extensions and trailer fields read and dropped)."""
        out = bytearray()
        while True:
            size_field = self.line().split(b";", 1)[0].strip()
            if _HEX.fullmatch(size_field) is None:
                raise HttpError(400, f"bad chunk size {size_field[:40]!r}")
            size = int(size_field, 16)
            if size == 0:
                break
            if len(out) + size > MAX_BODY:
                raise HttpError(413, f"body over {MAX_BODY} bytes")
            out += self.exact(size)
            if self.exact(2) != b"\r\n":
                raise HttpError(400, "a chunk does not end with CRLF")
        while self.line():
            pass
        return bytes(out)

    def buffered(self) -> int:
        return len(self.buf)


def parse_head(head: bytes) -> tuple[str, str, int, dict[str, str]]:
    """Request line and header fields -> (method, target path, minor version, headers); HttpError if bad."""
    lines = head.split(b"\n")
    line = lines[0].rstrip(b"\r")
    match = _REQUEST_LINE.fullmatch(line)
    if match is None:
        raise HttpError(400, f"malformed request line {line[:100]!r}")
    method_b, target_b, major, minor = match.groups()
    if major != b"1":
        raise HttpError(505, f"HTTP/{major.decode()}.{minor.decode()} (this server speaks HTTP/1.1)")
    target = target_b.decode("latin-1")
    if not target.startswith("/"):
        scheme, sep, rest = target.partition("://")  # absolute-form (RFC 9112 3.2.2): keep the path
        if not sep or scheme.lower() not in ("http", "https"):
            raise HttpError(400, f"request target {target[:100]!r} is not a path")
        target = "/" + rest.partition("/")[2]
    headers: dict[str, str] = {}
    for raw_line in lines[1:]:
        field = _FIELD.fullmatch(raw_line.rstrip(b"\r"))
        if field is None:
            raise HttpError(400, f"malformed header field {raw_line[:100]!r}")
        name, value = field.group(1).decode("latin-1").lower(), field.group(2).decode("latin-1")
        if name in headers:
            if name == "content-length" and headers[name] != value:
                raise HttpError(400, "Content-Length given twice with different values")
            if name not in ("content-length", "host"):
                headers[name] += ", " + value
            elif name == "host":
                raise HttpError(400, "Host given twice")
            continue
        headers[name] = value
    return method_b.decode("ascii"), target, int(minor), headers


class _DateCache:
    """``Date`` field value, formatted once a second."""

    def __init__(self) -> None:
        self.second, self.value = -1, ""

    def __call__(self) -> str:
        now = int(time.time())
        if now != self.second:
            self.second, self.value = now, formatdate(now, usegmt=True)
        return self.value


_date = _DateCache()


def response_head(status: int, headers: dict[str, str], length: int, close: bool, http10: bool) -> bytes:
    lines = [
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\nServer: fedge-agent\r\n"
        f"Date: {_date()}\r\nContent-Length: {length}\r\n"
    ]
    lines.extend(f"{key}: {value}\r\n" for key, value in headers.items())
    if close:
        lines.append("Connection: close\r\n")
    elif http10:
        lines.append("Connection: keep-alive\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("latin-1")


class _Connection(socketserver.BaseRequestHandler):
    """Serves one client connection: requests in order until either side closes it."""

    server: HttpServer
    request: socket.socket

    def setup(self) -> None:
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no Nagle/delayed-ACK stall
        self.server.track(self.request, True)

    def finish(self) -> None:
        self.server.track(self.request, False)

    def handle(self) -> None:
        sock, app = self.request, self.server.app
        reader = _Reader(sock)
        while True:
            http10 = False
            try:
                head = reader.head()
                if head is None:
                    return
                method, path, minor, headers = parse_head(head)
                http10 = minor == 0
                body = self._body(reader, method, headers, http10)
            except HttpError as exc:
                with contextlib.suppress(OSError):
                    self._send(*error(exc.status, str(exc)), close=True, http10=http10)
                    self._linger()
                return
            except OSError:  # the client went away (reset, or closed mid-request)
                return
            connection = headers.get("connection")
            if connection is None:
                close = http10
            else:
                tokens = {t.strip().lower() for t in connection.split(",")}
                close = ("keep-alive" not in tokens) if http10 else ("close" in tokens)
            try:
                status, fields, data = app(Request(method, path, headers, body))
            except Exception:
                _log.exception("%s %s failed", method, path)
                status, fields, data = error(500, f"{method} {path}: internal error")
                close = True
            try:
                self._send(status, fields, data, close=close, http10=http10, head_only=method == "HEAD")
            except OSError:
                return
            if close:
                return

    def _body(self, reader: _Reader, method: str, headers: dict[str, str], http10: bool) -> bytes:
        coding = headers.get("transfer-encoding")
        length = headers.get("content-length")
        if coding is not None:
            if length is not None:
                raise HttpError(400, "both Transfer-Encoding and Content-Length")
            if coding.strip().lower() != "chunked":
                raise HttpError(501, f"Transfer-Encoding {coding!r} (accepted: chunked)")
            self._continue(headers, http10, reader, 1)
            return reader.chunked()
        if length is None:
            if method in _BODYLESS:
                return b""
            raise HttpError(411, f"{method} without Content-Length (or Transfer-Encoding: chunked)")
        if not length.isdigit() or not length.isascii():
            raise HttpError(400, f"Content-Length {length[:40]!r} is not a non-negative integer")
        size = int(length)
        if size > MAX_BODY:
            raise HttpError(413, f"body over {MAX_BODY} bytes")
        if size == 0:
            return b""
        self._continue(headers, http10, reader, size)
        return reader.exact(size)

    def _continue(self, headers: dict[str, str], http10: bool, reader: _Reader, size: int) -> None:
        expect = headers.get("expect")
        if expect is None:
            return
        if expect.strip().lower() != "100-continue":
            raise HttpError(417, f"Expect {expect[:40]!r} (accepted: 100-continue)")
        if not http10 and reader.buffered() < size:
            self.request.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _send(
        self,
        status: int,
        fields: dict[str, str],
        data: bytes,
        *,
        close: bool,
        http10: bool,
        head_only: bool = False,
    ) -> None:
        head = response_head(status, fields, len(data), close, http10)
        if head_only:
            self.request.sendall(head)
        elif len(data) <= 64 * 1024:
            self.request.sendall(head + data)  # one segment for small replies
        else:
            self.request.sendall(head)
            self.request.sendall(data)

    def _linger(self) -> None:
        """Close after an error without a reset that could drop the reply: stop sending, then read (and
        drop) what the client still sends for a moment."""
        sock = self.request
        try:
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(1.0)
            drained = 0
            while drained < _DRAIN and (chunk := sock.recv(_RECV)):
                drained += len(chunk)
        except OSError:
            pass


class HttpServer(ThreadingHTTPServer):
    """An HTTP/1.1 server calling ``app`` for every request, one thread per connection;
    ``server_close`` also closes the connections still open (kept-alive clients)."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], app: App) -> None:
        self.app = app
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, _Connection)

    def track(self, sock: socket.socket, add: bool) -> None:
        with self._open_lock:
            if add:
                self._open.add(sock)
            else:
                self._open.discard(sock)

    def server_close(self) -> None:
        super().server_close()
        with self._open_lock:
            still_open, self._open = list(self._open), set()
        for sock in still_open:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
