"""Servers for benchmarks run outside pytest: a controller served by uvicorn in a background thread.
SeaweedFS as S3 comes from ``tests/fixtures/services.py`` (``run_seaweedfs``, shared with the test
fixtures), as do ports and waiting."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

from controller.app import create_app
from controller.state import ControllerState
from tests.fixtures.services import HOST, RunningS3, free_port, run_seaweedfs

__all__ = ["RunningS3", "live_controller", "run_seaweedfs"]


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
