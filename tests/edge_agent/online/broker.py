"""A plain Mosquitto on loopback (anonymous, no TLS): the site's sensor broker in the online-learning
tests and ``bench/online_ingest.py``."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from tests.fixtures.services import _ServerProcess, free_port

MOSQUITTO = "/usr/sbin/mosquitto"


@contextlib.contextmanager
def sensor_broker(directory: Path) -> Iterator[int]:
    """Start Mosquitto on 127.0.0.1 and a free port; yield the port; always stop it."""
    port = free_port()
    conf = directory / "mosquitto.conf"
    lines = [
        f"listener {port} 127.0.0.1",
        "allow_anonymous true",
        "persistence false",
        "max_queued_messages 0",
    ]
    if os.geteuid() == 0:
        lines.append("user root")
    conf.write_text("\n".join(lines) + "\n")
    proc = _ServerProcess("mosquitto", [MOSQUITTO, "-c", str(conf)], directory / "mosquitto.log")

    def accepts() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True

    try:
        proc.wait_ready(accepts, f"mosquitto on 127.0.0.1:{port}", timeout=20)
        yield port
    finally:
        proc.stop()
