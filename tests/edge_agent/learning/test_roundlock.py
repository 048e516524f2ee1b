"""The FL round lock: a round in another process holds the agent's update lock, and always lets go."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from edge_agent.learning.roundlock import RoundLockServer, hold_round, round_lock_mod, socket_path
from edge_agent.process import UpdateLock

ROOT = Path(__file__).parents[3]


@pytest.fixture
def lock() -> UpdateLock:
    return UpdateLock()


@pytest.fixture
def server(tmp_path: Path, lock: UpdateLock) -> Iterator[RoundLockServer]:
    srv = RoundLockServer(tmp_path, lock, poll=0.05)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def _until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_round_holds_the_update_lock_until_it_ends(
    tmp_path: Path, lock: UpdateLock, server: RoundLockServer
) -> None:
    released = threading.Event()
    lock.on_release(released.set)  # what the deploy loop uses to apply a deferred update

    with hold_round(tmp_path, "train run 7 round 2") as held:
        assert held
        assert lock.holders() == {"fl-round train run 7 round 2": 1}
        assert server.holders() == ["fl-round train run 7 round 2"]
        with lock.updating() as free:
            assert not free  # a model swap is deferred while the round runs

    assert released.wait(5)
    _until(lambda: not lock.held)
    with lock.updating() as free:
        assert free
    assert socket_path(tmp_path).stat().st_mode & 0o777 == 0o600


def test_a_round_starting_during_a_model_swap_waits_for_it(
    tmp_path: Path, lock: UpdateLock, server: RoundLockServer
) -> None:
    granted = threading.Event()

    def round_() -> None:
        with hold_round(tmp_path, "train run 1 round 1"):
            granted.set()

    with lock.updating() as free:
        assert free
        worker = threading.Thread(target=round_)
        worker.start()
        assert not granted.wait(0.5)  # the swap is being applied: the round does not start mid-swap
    assert granted.wait(5)
    worker.join(5)


def test_a_clientapp_process_that_is_killed_releases_the_lock(
    tmp_path: Path, lock: UpdateLock, server: RoundLockServer
) -> None:
    code = textwrap.dedent(
        f"""
        import os, signal, sys
        from edge_agent.learning.roundlock import hold_round
        with hold_round({str(tmp_path)!r}, "train run 3 round 1") as held:
            print("held" if held else "free", flush=True)
            sys.stdin.read()  # until killed
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=ROOT
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"held"
        assert lock.held
        proc.kill()
        proc.wait(10)
        _until(lambda: not lock.held)
        assert server.holders() == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_without_an_agent_a_round_runs_without_the_lock(tmp_path: Path) -> None:
    with hold_round(tmp_path / "nobody-here", "train") as held:
        assert held is False


def test_a_state_dir_longer_than_a_socket_address_still_works(tmp_path: Path, lock: UpdateLock) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    assert len(str(socket_path(deep))) > 108
    srv = RoundLockServer(deep, lock, poll=0.05)
    srv.start()
    try:
        with hold_round(deep, "evaluate run 1 round 1") as held:
            assert held and lock.held
    finally:
        srv.stop()
    assert not socket_path(deep).exists()


def test_the_clientapp_mod_holds_the_lock_around_each_message(
    tmp_path: Path, lock: UpdateLock, server: RoundLockServer
) -> None:
    msg = SimpleNamespace(metadata=SimpleNamespace(message_type="train", run_id=5, group_id="3"))
    seen: list[dict[str, int]] = []

    def call_next(m: Any, c: Any) -> str:
        seen.append(lock.holders())
        return "reply"

    context = SimpleNamespace(node_config={"fedge-state-dir": str(tmp_path)})
    reply: Any = round_lock_mod(msg, context, call_next)  # type: ignore[arg-type]
    assert reply == "reply"
    assert seen == [{"fl-round train run 5 round 3": 1}]
    _until(lambda: not lock.held)

    # simulation (no state dir in the node config): no lock, the message is still handled
    reply = round_lock_mod(msg, SimpleNamespace(node_config={}), call_next)  # type: ignore[arg-type]
    assert reply == "reply"
    assert seen[-1] == {}


def test_a_stopped_server_releases_rounds_still_connected(tmp_path: Path, lock: UpdateLock) -> None:
    srv = RoundLockServer(tmp_path, lock, poll=0.05)
    srv.start()
    with hold_round(tmp_path, "train run 1 round 1"):
        assert lock.held
        srv.stop()
        assert not lock.held
