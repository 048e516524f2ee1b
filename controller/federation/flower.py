"""The Flower engine (flwr 1.42, deployment runtime): a supervised SuperLink, a Fleet-only front, runs
submitted over the Control API.

::

    devices (flower-supernode, node auth with the enrolled key)
        │ TLS (certificate signed by the device CA)
        ▼
    FleetFront  fl_fleet_host:fl_fleet_port   forwards /v1/fleet/* and /health only; 404 for the rest
        │ TLS (the same certificate)
        ▼
    flower-superlink  127.0.0.1:<port>         Fleet + Control + Runtime on one port, --enable-supernode-auth,
        │                                      --disable-runtime-dependency-installation, own FLWR_HOME
        │ flower-superexec -> flwr-serverapp   the FAB's ServerApp (controller.federation.flower_app)
        ▼
    POST <fl_report_url>/v1/fl/jobs/{id}/reports   every round, with the job's own token

The Control API of an open-source SuperLink has no authentication, so the SuperLink binds 127.0.0.1 and
only the controller talks to it (:class:`ControlClient`, a wrapper over flwr's internal
``ControlHttpClient``: StartRun, ListRuns, StreamLogs, StopRun, RegisterNode, UnregisterNode, ListNodes).
With ``fl_superlink_address`` the engine uses an external SuperLink instead (that SuperLink must then
keep its Control API away from devices itself; the front still forwards only Fleet routes).

Processes: the SuperLink runs in its own session; the ServerApp processes it starts run in sessions of
their own and can outlive it, so every process the SuperLink starts carries ``FEDGE_FL_TAG=<tag>`` in its
environment and :meth:`SuperLinkProcess.stop` ends them all by PID (also those of a SuperLink a crashed
controller left behind, found through ``superlink.pid``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import ipaddress
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import tomllib
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import flwr
import httpx
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from flwr.cli.build import build_fab_from_disk
from flwr.common.serde import fab_to_proto, run_from_proto, user_config_to_proto
from flwr.proto.control_pb2 import (
    ListNodesRequest,
    ListRunsRequest,
    RegisterNodeRequest,
    StartRunRequest,
    StopRunRequest,
    StreamLogsRequest,
    UnregisterNodeRequest,
)
from flwr.supercore.control import ControlHttpClient
from flwr.supercore.fab import Fab
from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor

from controller.federation.base import (
    EngineError,
    EngineUnavailable,
    FederationEngine,
    FederationOutcome,
    FederationSpec,
    FleetEndpoint,
    ReportCallback,
)
from controller.training.base import JobState
from fedge_common.files import atomic_write
from fedge_common.quiet import QUIET_ENV

log = logging.getLogger("fedge.federation.flower")

__all__ = [
    "FAB_DIR",
    "FLWR_SERIES",
    "QUIET_ENV",
    "ControlClient",
    "FleetFront",
    "FlowerEngine",
    "ServerTls",
    "SuperLinkProcess",
    "build_fab",
    "fab_config",
    "public_key_pem",
]

FLWR_SERIES = "1.42."
"""The flwr release series whose internals (ControlHttpClient, FAB build, serde) this module uses."""
FAB_DIR = Path(__file__).parent / "fab"
TAG_ENV = "FEDGE_FL_TAG"
FLEET_PREFIX = "/v1/fleet/"
MAX_FLEET_BODY = 64 * 1024 * 1024  # Flower pushes arrays in chunks of at most 5 MiB
CERT_DAYS = 365
POLL_SECONDS = 1.0
_HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade"}
T = TypeVar("T")


def check_flwr_version() -> None:
    """EngineUnavailable unless the installed flwr is the series this module was written against."""
    version = str(getattr(flwr, "__version__", "unknown"))
    if not version.startswith(FLWR_SERIES):
        raise EngineUnavailable(
            f"the Flower engine uses flwr {FLWR_SERIES}x internals (ControlHttpClient); installed flwr is "
            f"{version}: install the version in requirements/lock.txt"
        )


def public_key_pem(certificate_pem: str) -> bytes:
    """The PEM SubjectPublicKeyInfo of a device certificate's key: what the SuperLink registers, byte for
    byte what a SuperNode holding that key sends in its signed Fleet requests."""
    cert = x509.load_pem_x509_certificate(certificate_pem.encode())
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise EngineError("device certificates hold EC keys; this one does not")
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def fab_config(app_dir: Path = FAB_DIR) -> dict[str, Any]:
    """``[tool.flwr.app.config]`` of the app: the run-config keys a job may set, with their defaults."""
    with open(app_dir / "pyproject.toml", "rb") as fh:
        data = tomllib.load(fh)
    config: dict[str, Any] = data["tool"]["flwr"]["app"]["config"]
    return config


def build_fab(app_dir: Path = FAB_DIR) -> tuple[bytes, str]:
    """The FAB of the app directory (in memory) and its SHA-256."""
    try:
        fab = build_fab_from_disk(app_dir)
    except ValueError as exc:
        raise EngineError(f"cannot build the Flower app in {app_dir}: {exc}") from exc
    return fab, hashlib.sha256(fab).hexdigest()


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _ssl_context(ca_pem: bytes) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.load_verify_locations(cadata=ca_pem.decode("ascii"))
    return ctx


# --------------------------------------------------------------------------------------------- TLS


@dataclass(frozen=True)
class ServerTls:
    """The federation's server certificate (one for the SuperLink and the Fleet front), signed by the
    device CA: devices already pin that CA. SAN: IP 127.0.0.1, DNS localhost and the configured hosts."""

    cert_path: Path
    key_path: Path
    ca_path: Path

    @property
    def ca_pem(self) -> bytes:
        return self.ca_path.read_bytes()

    @classmethod
    def load_or_create(cls, directory: Path, ca: Any, hosts: list[str]) -> ServerTls:
        """Reuse the certificate under ``directory`` while it names every host and has 30 days left;
        else make a new key and certificate. ``ca``: the DeviceCA (``sign_certificate``)."""
        directory.mkdir(parents=True, exist_ok=True)
        tls = cls(directory / "server.pem", directory / "server.key", directory / "ca.pem")
        wanted = sorted({"127.0.0.1", "localhost", *hosts})
        ca_pem = ca.certificate_pem.encode()
        if tls.cert_path.exists() and tls.key_path.exists() and tls.ca_path.exists():
            cert = x509.load_pem_x509_certificate(tls.cert_path.read_bytes())
            names = sorted(_san_names(cert))
            fresh = cert.not_valid_after_utc - dt.datetime.now(dt.UTC) > dt.timedelta(days=30)
            if names == wanted and fresh and tls.ca_path.read_bytes() == ca_pem:
                return tls
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        sans: list[x509.GeneralName] = []
        for host in wanted:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedge federation")]))
            .issuer_name(ca.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=CERT_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        )
        cert = ca.sign_certificate(builder)
        atomic_write(
            tls.key_path,
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
        )
        tls.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        tls.ca_path.write_bytes(ca_pem)
        return tls


def _san_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(n.value) for n in san]


# ----------------------------------------------------------------------------------- the SuperLink


class SuperLinkProcess:
    """``flower-superlink`` on 127.0.0.1 as a supervised child process (its own session and FLWR_HOME)."""

    def __init__(
        self,
        home: Path,
        tls: ServerTls,
        *,
        port: int = 0,
        node_auth: bool = True,
        bin_dir: Path | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        self.home = home
        self.tls = tls
        self.requested_port = port
        self.port = 0
        self.node_auth = node_auth
        self.bin_dir = bin_dir or Path(sys.executable).parent
        self.start_timeout = start_timeout
        self.tag = uuid.uuid4().hex
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_in: float | None = None
        self._log_fh: Any = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.home / "superlink.log"

    @property
    def pid_path(self) -> Path:
        return self.home / "superlink.pid"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def command(self) -> list[str]:
        cmd = [
            str(self.bin_dir / "flower-superlink"),
            "--ssl-ca-certfile",
            str(self.tls.ca_path),
            "--ssl-certfile",
            str(self.tls.cert_path),
            "--ssl-keyfile",
            str(self.tls.key_path),
            "--disable-runtime-dependency-installation",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--database",
            str(self.home / "state.db"),
        ]
        if self.node_auth:
            cmd.insert(1, "--enable-supernode-auth")
        return cmd

    def environment(self) -> dict[str, str]:
        """Only what flwr needs (no controller credentials): the venv's bin first on PATH (the SuperLink
        starts flower-superexec from PATH), telemetry off, its own FLWR_HOME, the cleanup tag."""
        env = {
            "PATH": f"{self.bin_dir}{os.pathsep}/usr/local/bin:/usr/bin:/bin",
            "HOME": str(self.home),
            "LANG": "C.UTF-8",
            "TMPDIR": str(self.home / "tmp"),
            "FLWR_HOME": str(self.home),
            TAG_ENV: self.tag,
            **QUIET_ENV,
        }
        for key in ("PYTHONPATH", "VIRTUAL_ENV"):
            if key in os.environ:
                env[key] = os.environ[key]
        return env

    def _write_config(self) -> None:
        (self.home / "tmp").mkdir(parents=True, exist_ok=True)
        (self.home / "config.toml").write_text(
            "# written by the fedge controller: no remote federations\n"
            '[superlink]\ndefault = "local"\n\n[superlink.local]\n'
            f'address = "{self.address}"\nroot-certificates = "{self.tls.ca_path}"\n'
        )

    def start(self) -> None:
        """Start it and wait until ``/health`` answers over TLS; EngineUnavailable with the log's tail if
        it exits or stays unhealthy."""
        if self.alive():
            return
        self.home.mkdir(parents=True, exist_ok=True)
        self._kill_leftover()
        self.port = self.requested_port or _free_port()
        self._write_config()
        self._log_fh = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        began = time.monotonic()
        try:
            self.proc = subprocess.Popen(
                self.command(),
                cwd=self.home,
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=self._log_fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            self._log_fh.close()
            raise EngineUnavailable(f"cannot start flower-superlink: {exc}") from exc
        self.pid_path.write_text(f"{self.proc.pid} {self.tag}\n")
        ctx = _ssl_context(self.tls.ca_pem)
        deadline = began + self.start_timeout
        with httpx.Client(verify=ctx, timeout=2.0) as client:
            while True:
                if self.proc.poll() is not None:
                    code = self.proc.returncode
                    self.stop()
                    raise EngineUnavailable(
                        f"flower-superlink exited with code {code} while starting: {self.log_tail()}"
                    )
                try:
                    if client.get(f"https://{self.address}/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise EngineUnavailable(
                        f"flower-superlink not healthy after {self.start_timeout:.0f} s: {self.log_tail()}"
                    )
                time.sleep(0.2)
        self.started_in = time.monotonic() - began
        log.info(
            "SuperLink on %s healthy after %.1f s (pid %d)", self.address, self.started_in, self.proc.pid
        )

    def log_tail(self, lines: int = 8) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(max(0, self.log_path.stat().st_size - 16 * 1024))
                text = fh.read().decode("utf-8", "replace")
        except OSError:
            return "(no log)"
        kept = [_strip_ansi(line) for line in text.splitlines() if line.strip()]
        return " | ".join(kept[-lines:]) or "(empty log)"

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the SuperLink's process group, SIGKILL after ``timeout``, then end every process
        carrying its tag (ServerApps in their own sessions)."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        kill_tagged(self.tag)
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None
        with contextlib.suppress(FileNotFoundError):
            self.pid_path.unlink()

    def _kill_leftover(self) -> None:
        """A SuperLink (and its ServerApps) that a crashed controller left running on this home."""
        try:
            _pid, tag = self.pid_path.read_text().split()
        except (OSError, ValueError):
            return
        if kill_tagged(tag):
            log.warning("stopped the processes of a SuperLink an earlier controller left running")
        with contextlib.suppress(FileNotFoundError):
            self.pid_path.unlink()


def _strip_ansi(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        if text[i] == "\x1b" and i + 1 < len(text) and text[i + 1] == "[":
            j = i + 2
            while j < len(text) and not text[j].isalpha():
                j += 1
            i = j + 1
            continue
        out.append(text[i])
        i += 1
    return "".join(out).strip()


def tagged_pids(tag: str) -> list[int]:
    """PIDs of this user's processes whose environment holds ``FEDGE_FL_TAG=<tag>``."""
    needle = f"{TAG_ENV}={tag}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def kill_tagged(tag: str, grace: float = 3.0) -> int:
    """SIGTERM every tagged process, SIGKILL what is left after ``grace``; how many there were."""
    pids = tagged_pids(tag)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    count = len(pids)
    deadline = time.monotonic() + grace
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if _exists(p)]
        time.sleep(0.1)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return count


def _exists(pid: int) -> bool:
    """Alive and not a zombie (tagged processes are not this process's children: nothing to reap here,
    and reaping with waitpid(-1) would steal other subprocesses' exit codes)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


# ------------------------------------------------------------------------------ the Fleet-only front


class FleetFront:
    """An ASGI reverse proxy on its own TLS port that forwards only ``/v1/fleet/*`` and ``/health`` to the
    SuperLink (over TLS) and answers 404 to everything else (Control, Runtime, docs). Request headers,
    the SuperNode's signature headers included, pass unchanged; bodies are capped at 64 MiB."""

    def __init__(
        self, upstream: str, upstream_ca: bytes, tls: ServerTls, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.upstream = upstream  # https://host:port
        self.upstream_ca = upstream_ca
        self.tls = tls
        self.host = host
        self.port = port
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @staticmethod
    def allowed(path: str) -> bool:
        return path.startswith(FLEET_PREFIX) or path == "/health"

    def app(self) -> Any:
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import PlainTextResponse, Response
        from starlette.routing import Route

        state: dict[str, httpx.AsyncClient] = {}

        @asynccontextmanager
        async def lifespan(_app: Any) -> AsyncIterator[None]:
            state["client"] = httpx.AsyncClient(
                base_url=self.upstream, verify=_ssl_context(self.upstream_ca), timeout=120.0
            )
            try:
                yield
            finally:
                await state["client"].aclose()

        async def forward(request: Request) -> Response:
            path = request.url.path
            if not self.allowed(path):
                return PlainTextResponse("not exposed to devices", status_code=404)
            body = bytearray()
            async for chunk in request.stream():
                body.extend(chunk)
                if len(body) > MAX_FLEET_BODY:
                    return PlainTextResponse("request body too large", status_code=413)
            headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
            try:
                upstream = await state["client"].request(
                    request.method, path, content=bytes(body), headers=headers, params=request.query_params
                )
            except httpx.HTTPError as exc:
                log.warning("Fleet front: the SuperLink did not answer %s: %s", path, exc)
                return PlainTextResponse("the federation server is not reachable", status_code=502)
            out = {
                k: v
                for k, v in upstream.headers.items()
                if k.lower() not in _HOP_HEADERS | {"content-encoding", "date", "server"}
            }
            return Response(upstream.content, status_code=upstream.status_code, headers=out)

        return Starlette(
            routes=[Route("/{path:path}", forward, methods=["GET", "POST", "PUT", "DELETE", "PATCH"])],
            lifespan=lifespan,
        )

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 20.0) -> None:
        import uvicorn

        if self._thread is not None and self._thread.is_alive():
            return
        port = self.port or _free_port(self.host)
        config = uvicorn.Config(
            self.app(),
            host=self.host,
            port=port,
            ssl_certfile=str(self.tls.cert_path),
            ssl_keyfile=str(self.tls.key_path),
            log_level="warning",
            access_log=False,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="fedge-fleet-front", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise EngineUnavailable(f"the Fleet front could not listen on {self.host}:{port}")
            time.sleep(0.02)
        self.port = port

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        self._server, self._thread = None, None


# ------------------------------------------------------------------------------- the Control API


class ControlClient:
    """The SuperLink's Control API through flwr's ``ControlHttpClient`` (pinned to 1.42). Errors become
    EngineUnavailable (not reachable) or EngineError (refused, with the SuperLink's code and detail)."""

    ALREADY_IN_USE = 23  # flwr ApiErrorCode.PUBLIC_KEY_ALREADY_IN_USE
    NODE_NOT_FOUND = 24

    def __init__(self, address: str, root_certificates: bytes) -> None:
        check_flwr_version()
        self.address = address
        self._client = ControlHttpClient.from_server_address(
            server_address=address,
            insecure=False,
            root_certificates=root_certificates,
            interceptors=[RuntimeVersionHttpInterceptor(component_name="fedge-controller")],
        )

    def close(self) -> None:
        self._client.close()

    def _call(self, what: str, call: Callable[[], T]) -> T:
        try:
            return call()
        except httpx.HTTPStatusError as exc:
            code, detail = _flower_error(exc.response)
            raise FlowerRefused(what, exc.response.status_code, code, detail) from exc
        except httpx.HTTPError as exc:
            raise EngineUnavailable(
                f"the SuperLink at {self.address} did not answer ({what}): {exc}"
            ) from exc

    def start_run(self, fab: bytes, fab_hash: str, config: Mapping[str, Any]) -> int:
        request = StartRunRequest(
            fab=fab_to_proto(Fab(fab_hash, fab, {})), override_config=user_config_to_proto(dict(config))
        )
        return int(self._call("StartRun", lambda: self._client.StartRun(request)).run_id)

    def run_status(self, run_id: int) -> tuple[str, str, str]:
        """(status, sub_status, details): ``pending|starting|running|finished`` and, once finished,
        ``completed|failed|stopped``."""
        response = self._call("ListRuns", lambda: self._client.ListRuns(ListRunsRequest(run_id=run_id)))
        if run_id not in response.run_dict:
            raise EngineError(f"the SuperLink does not know run {run_id}")
        status = run_from_proto(response.run_dict[run_id]).status
        return status.status, status.sub_status, status.details

    def stop_run(self, run_id: int) -> None:
        with contextlib.suppress(FlowerRefused):  # already finished
            self._call("StopRun", lambda: self._client.StopRun(StopRunRequest(run_id=run_id)))

    def logs(self, run_id: int, seconds: float = 5.0) -> str:
        """The run's log as far as it can be read in ``seconds`` (a finished run's stream just ends)."""
        chunks: list[str] = []

        def read() -> None:
            with contextlib.suppress(Exception):
                for chunk in self._client.StreamLogs(StreamLogsRequest(run_id=run_id, after_timestamp=0.0)):
                    chunks.append(chunk.log_output)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(seconds)
        return "".join(chunks)

    def register_node(self, public_key: bytes, name: str) -> int:
        try:
            response = self._call(
                "RegisterNode",
                lambda: self._client.RegisterNode(RegisterNodeRequest(public_key=public_key, name=name)),
            )
        except FlowerRefused as exc:
            if exc.code != self.ALREADY_IN_USE:
                raise
            for node in self.nodes():
                if node.public_key == public_key and node.status != "unregistered":
                    return int(node.node_id)
            raise EngineError(
                "the SuperLink refuses this key: it belonged to a node that was unregistered (a revoked "
                "device); enroll the device again"
            ) from exc
        return int(response.node_id)

    def unregister_node(self, node_id: int) -> None:
        try:
            self._call(
                "UnregisterNode", lambda: self._client.UnregisterNode(UnregisterNodeRequest(node_id=node_id))
            )
        except FlowerRefused as exc:
            if exc.code != self.NODE_NOT_FOUND:
                raise

    def nodes(self) -> list[Any]:
        return list(self._call("ListNodes", lambda: self._client.ListNodes(ListNodesRequest())).nodes_info)


class FlowerRefused(EngineError):
    """The SuperLink answered a Control call with an error."""

    def __init__(self, what: str, status: int, code: int | None, detail: str) -> None:
        self.status, self.code, self.detail = status, code, detail
        super().__init__(f"the SuperLink refused {what} (HTTP {status}, code {code}): {detail}")


def _flower_error(response: httpx.Response) -> tuple[int | None, str]:
    try:
        response.read()
        body = response.json()
    except (ValueError, httpx.HTTPError):
        return None, response.text[:300] if response.is_closed else ""
    if not isinstance(body, dict):
        return None, str(body)[:300]
    code = body.get("code")
    return (int(code) if isinstance(code, int) else None), str(body.get("detail", ""))[:300]


# ---------------------------------------------------------------------------------------- engine


class _Inbox:
    """What reaches the controller while one job runs."""

    def __init__(self, on_round: ReportCallback) -> None:
        self.on_round = on_round
        self.last = time.monotonic()
        self.summary: dict[str, Any] | None = None
        self.failure: str | None = None

    def deliver(self, report: Mapping[str, Any]) -> None:
        self.last = time.monotonic()
        kind = report.get("type")
        if kind == "failed":
            self.failure = str(report.get("reason") or "the ServerApp failed")
        elif kind == "finished":
            self.summary = dict(report)
        self.on_round(report)


class FlowerEngine(FederationEngine):
    """Flower deployment runtime: a supervised SuperLink (or an external one) behind the Fleet front."""

    name = "flower"

    def __init__(
        self,
        home: Path,
        ca: Any,
        *,
        superlink_address: str | None = None,
        superlink_ca: bytes | None = None,
        superlink_port: int = 0,
        fleet_host: str = "127.0.0.1",
        fleet_port: int = 0,
        fleet_public_host: str | None = None,
        start_timeout: float = 60.0,
        app_dir: Path = FAB_DIR,
    ) -> None:
        check_flwr_version()
        self.home = home
        self.ca = ca
        self.external = superlink_address
        public = fleet_public_host or ("127.0.0.1" if fleet_host in ("0.0.0.0", "::") else fleet_host)  # noqa: S104
        self.fleet_public_host = public
        self.tls = ServerTls.load_or_create(
            home / "tls", ca, [public, fleet_host] if fleet_host else [public]
        )
        self.superlink_ca = superlink_ca or self.tls.ca_pem
        self.superlink = (
            None
            if superlink_address
            else SuperLinkProcess(
                home / "superlink", self.tls, port=superlink_port, start_timeout=start_timeout
            )
        )
        self.front = FleetFront("", self.superlink_ca, self.tls, host=fleet_host, port=fleet_port)
        self.app_dir = app_dir
        self._control: ControlClient | None = None
        self._fab: tuple[bytes, str] | None = None
        self._inboxes: dict[str, _Inbox] = {}
        self._lock = threading.RLock()

    # -- lifecycle ---------------------------------------------------------------------------------

    @property
    def superlink_address(self) -> str:
        if self.external:
            return self.external
        assert self.superlink is not None
        return self.superlink.address

    @property
    def identity(self) -> str:
        return self.external or f"managed:{self.home}"

    def start(self) -> None:
        with self._lock:
            if self.superlink is not None and not self.superlink.alive():
                if self._control is not None:
                    self._control.close()
                    self._control = None
                self.superlink.start()
                self.front.stop()
            if self._control is None:
                self._control = ControlClient(self.superlink_address, self.superlink_ca)
            self.front.upstream = f"https://{self.superlink_address}"
            self.front.start()

    @property
    def control(self) -> ControlClient:
        self.start()
        assert self._control is not None
        return self._control

    def health(self) -> None:
        if self.superlink is not None and not self.superlink.alive():
            raise EngineUnavailable("the SuperLink is not running")

    def close(self) -> None:
        with self._lock:
            self.front.stop()
            if self._control is not None:
                self._control.close()
                self._control = None
            if self.superlink is not None:
                self.superlink.stop()

    def fleet_endpoint(self) -> FleetEndpoint:
        self.start()
        return FleetEndpoint(
            address=f"{self.fleet_public_host}:{self.front.port}",
            root_certificate=self.tls.ca_pem.decode(),
        )

    # -- nodes -------------------------------------------------------------------------------------

    def register_node(self, device_id: str, public_key_pem: bytes) -> int:
        with self._lock:
            return self.control.register_node(public_key_pem, device_id)

    def unregister_node(self, node_id: int) -> None:
        with self._lock:
            self.control.unregister_node(node_id)

    # -- runs --------------------------------------------------------------------------------------

    def fab(self) -> tuple[bytes, str]:
        if self._fab is None:
            self._fab = build_fab(self.app_dir)
        return self._fab

    def run_config(self, spec: FederationSpec) -> dict[str, Any]:
        """The run config of a job (every key must be one the FAB declares)."""
        import json

        config: dict[str, Any] = {
            "num-server-rounds": spec.rounds,
            "strategy": json.dumps(dict(spec.strategy), sort_keys=True),
            "min-nodes": spec.min_clients,
            "model": spec.network,
            "seed": spec.seed,
            "initial-path": str(spec.initial_path or ""),
            "local-epochs": spec.local_epochs,
            "batch-size": spec.batch_size,
            "lr": float(spec.lr),
            "momentum": float(spec.momentum),
            "dp-target-epsilon": float(spec.dp_target_epsilon),
            "dp-delta": float(spec.dp_delta),
            "dp-max-grad-norm": float(spec.dp_max_grad_norm),
            "job-id": spec.job_id,
            "report-url": spec.report_url,
            "report-token": spec.report_token,
            "output-path": str(spec.output_path),
            "round-timeout": float(spec.round_timeout_s),
            "algorithm": spec.algorithm,
            "pate": json.dumps(dict(spec.pate), sort_keys=True) if spec.pate else "",
            "secure-aggregation": json.dumps(dict(spec.secure_aggregation), sort_keys=True)
            if spec.secure_aggregation
            else "",
            "he": json.dumps(dict(spec.he), sort_keys=True) if spec.he else "",
            "fedge-participant-nodes": " ".join(str(n) for n in spec.participant_nodes),
            "fedge-node-wait-timeout": float(spec.node_wait_s),
        }
        unknown = sorted(set(config) - set(fab_config(self.app_dir)))
        if unknown:
            raise EngineError(f"the Flower app in {self.app_dir} does not declare run-config keys {unknown}")
        return config

    def deliver(self, job_id: str, report: Mapping[str, Any]) -> bool:
        with self._lock:
            inbox = self._inboxes.get(job_id)
        if inbox is None:
            return False
        inbox.deliver(report)
        return True

    def run(
        self, spec: FederationSpec, cancel: threading.Event, on_round: ReportCallback
    ) -> FederationOutcome:
        began = time.monotonic()
        fab, fab_hash = self.fab()
        config = self.run_config(spec)
        inbox = _Inbox(on_round)
        with self._lock:
            self._inboxes[spec.job_id] = inbox
        try:
            control = self.control
            run_id = control.start_run(fab, fab_hash, config)
            log.info("job %s: Flower run %d started (FAB %s)", spec.job_id, run_id, fab_hash[:12])
            return self._watch(spec, run_id, control, inbox, cancel, began)
        finally:
            with self._lock:
                self._inboxes.pop(spec.job_id, None)

    def _watch(
        self,
        spec: FederationSpec,
        run_id: int,
        control: ControlClient,
        inbox: _Inbox,
        cancel: threading.Event,
        began: float,
    ) -> FederationOutcome:
        stall_s = 2 * max(spec.node_wait_s, spec.round_timeout_s) + 120.0
        rid = str(run_id)

        def ended(state: JobState, reason: str | None = None) -> FederationOutcome:
            output = spec.output_path if spec.output_path.exists() else None
            return FederationOutcome(
                state, reason, rid, output, inbox.summary or {}, seconds=time.monotonic() - began
            )

        while True:
            if cancel.wait(POLL_SECONDS):
                control.stop_run(run_id)
                return ended(JobState.CANCELLED, "cancelled")
            try:
                status, sub_status, details = control.run_status(run_id)
            except EngineUnavailable as exc:
                if self.superlink is not None and not self.superlink.alive():
                    return ended(JobState.FAILED, f"the SuperLink stopped during the job: {exc}")
                continue  # a blip; the deadlines below still apply
            if status == "finished":
                break
            now = time.monotonic()
            if now - began > spec.timeout_s:
                control.stop_run(run_id)
                return ended(JobState.FAILED, f"timed out after {spec.timeout_s:.0f} s")
            if now - inbox.last > stall_s:
                control.stop_run(run_id)
                return ended(JobState.FAILED, f"no round ended for {stall_s:.0f} s; the job was stopped")
        if sub_status == "completed":
            if inbox.summary is None or not spec.output_path.exists():
                return ended(JobState.FAILED, "the run completed without a final model (no summary report)")
            return ended(JobState.SUCCEEDED)
        if sub_status == "stopped" and cancel.is_set():
            return ended(JobState.CANCELLED, "cancelled")
        reason = inbox.failure or details or _last_error(control.logs(run_id)) or f"the run {sub_status}"
        return ended(JobState.FAILED, f"the Flower run {sub_status}: {reason}")


def _last_error(log_text: str) -> str:
    lines = [_strip_ansi(line) for line in log_text.splitlines() if line.strip()]
    for line in reversed(lines):
        if "Error" in line or "error" in line:
            return line[:500]
    return lines[-1][:500] if lines else ""
