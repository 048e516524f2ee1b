"""Servers for benchmarks run outside pytest: a controller served by uvicorn in a background thread, or
as its own ``fedge-controller serve`` process.
SeaweedFS as S3 comes from ``tests/fixtures/services.py`` (``run_seaweedfs``, shared with the test
fixtures), as do ports and waiting."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from controller.app import create_app
from controller.state import ControllerState
from tests.fixtures.services import HOST, RunningS3, free_port, process_cpu_seconds, run_seaweedfs

__all__ = [
    "RunningS3",
    "controller_process",
    "live_controller",
    "process_cpu_seconds",
    "run_seaweedfs",
    "start_profilers",
    "stop_profilers",
]


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


@contextlib.contextmanager
def controller_process(
    data_dir: Path, token: str, env: dict[str, str] | None = None, timeout: float = 120.0
) -> Iterator[tuple[str, int]]:
    """``fedge-controller serve`` as its own process (its own GIL, as in production) on a free loopback
    port, ``FEDGE_*`` settings from ``env`` on top of this process's environment; yields (URL, pid).
    Its output goes to ``data_dir/controller.log``."""
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, "FEDGE_DATA_DIR": str(data_dir), "FEDGE_ADMIN_TOKEN": token, **(env or {})}
    log = open(data_dir / "controller.log", "ab")  # noqa: SIM115 - handed to the child process
    argv = [sys.executable, "-m", "controller.cli", "serve", "--host", HOST, "--port", str(port),
            "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(argv, env=full_env, stdout=log, stderr=log)
    url = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"controller did not start; see {data_dir / 'controller.log'}")
            time.sleep(0.2)
        yield url, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


def start_profilers(out: Path | None, pids: dict[str, int]) -> list[subprocess.Popen[bytes]]:
    """``py-spy record`` (all threads, raw folded stacks) of each process until stopped."""
    if out is None:
        return []
    import shutil

    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out.mkdir(parents=True, exist_ok=True)
    argv = [spy, "record", "--rate", "200", "--format", "raw", "--threads", "--nonblocking"]
    return [
        subprocess.Popen(
            [*argv, "--pid", str(pid), "--output", str(out / f"{name}.txt")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name, pid in pids.items()
    ]


def stop_profilers(spies: list[subprocess.Popen[bytes]]) -> None:
    import signal

    for spy in spies:
        spy.send_signal(signal.SIGINT)
    for spy in spies:
        spy.wait(30)
