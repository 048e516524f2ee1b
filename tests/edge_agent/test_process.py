"""The agent process host (services started in order, stopped in reverse, supervised) and the update lock."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from edge_agent.process import (
    AgentProcess,
    RestartPolicy,
    Service,
    ServiceFailed,
    ServiceStartError,
    UpdateLock,
)


class Recorded(Service):
    """A service that writes what happens to it into a shared journal."""

    def __init__(
        self,
        name: str,
        journal: list[str],
        *,
        fail_start: Exception | None = None,
        restart: RestartPolicy | None = None,
    ) -> None:
        self.name, self.journal, self.fail_start, self.restart = name, journal, fail_start, restart
        self.alive = False

    def start(self) -> None:
        self.journal.append(f"start {self.name}")
        if self.fail_start is not None:
            raise self.fail_start
        self.alive = True

    def stop(self) -> None:
        self.journal.append(f"stop {self.name}")
        self.alive = False

    def healthy(self) -> bool:
        return self.alive

    def failure(self) -> str | None:
        return None if self.alive else "it died"


def _run_in_thread(process: AgentProcess) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def target() -> None:
        try:
            process.run()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, errors


def test_services_start_in_order_and_stop_in_reverse_order() -> None:
    journal: list[str] = []
    process = AgentProcess([Recorded(n, journal) for n in ("a", "b", "c")], check_interval=0.01)
    ready = threading.Event()

    thread = threading.Thread(target=process.run, kwargs={"ready": ready.set}, daemon=True)
    thread.start()
    assert ready.wait(5)
    process.request_stop()
    thread.join(5)

    assert journal == ["start a", "start b", "start c", "stop c", "stop b", "stop a"]


def test_a_service_that_fails_to_start_stops_those_already_started_with_a_one_line_error() -> None:
    journal: list[str] = []
    services = [
        Recorded("deploy", journal),
        Recorded("local-api", journal, fail_start=OSError("[Errno 98] Address\nalready in use")),
        Recorded("mqtt", journal),
    ]

    with pytest.raises(ServiceStartError) as raised:
        AgentProcess(services).run()

    assert (
        str(raised.value) == "service 'local-api' did not start: OSError: [Errno 98] Address already in use"
    )
    assert journal == ["start deploy", "start local-api", "stop deploy"]


def test_a_service_that_dies_ends_the_process_and_everything_is_stopped() -> None:
    journal: list[str] = []
    dying = Recorded("deploy", journal)
    process = AgentProcess([dying, Recorded("api", journal)], check_interval=0.01)
    thread, errors = _run_in_thread(process)
    while "start api" not in journal:
        time.sleep(0.01)

    dying.alive = False
    thread.join(5)

    assert len(errors) == 1 and isinstance(errors[0], ServiceFailed)
    assert str(errors[0]) == "service 'deploy' stopped unexpectedly: it died"
    assert journal[-2:] == ["stop api", "stop deploy"]


def test_a_service_with_a_restart_policy_is_restarted_until_its_limit() -> None:
    journal: list[str] = []
    flaky = Recorded("supernode", journal, restart=RestartPolicy(limit=2, window=60, delay=0))
    process = AgentProcess([flaky], check_interval=0.01)
    thread, errors = _run_in_thread(process)

    for restarts in range(3):
        deadline = time.monotonic() + 5
        while journal.count("start supernode") <= restarts:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        flaky.alive = False  # the child ended by itself
    thread.join(5)

    assert journal.count("start supernode") == 3  # the first start and two restarts
    assert len(errors) == 1 and isinstance(errors[0], ServiceFailed)


def test_sigterm_sets_the_stop_event_once_the_handlers_are_installed() -> None:
    process = AgentProcess([])
    restore = process.install_signal_handlers()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert process.stop_event.wait(5)
    finally:
        restore()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_importing_the_agent_does_not_install_signal_handlers() -> None:
    import subprocess
    import sys

    code = (
        "import signal, edge_agent.cli, edge_agent.process, edge_agent.deploy.agent; "
        "print(signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


# ------------------------------------------------------------------ update lock
def test_the_update_lock_counts_holders_and_is_reentrant_per_holder() -> None:
    lock = UpdateLock()
    lock.acquire("grid-run 1")
    lock.acquire("grid-run 1")
    lock.acquire("fl-round 7")

    lock.release("grid-run 1")
    lock.release("fl-round 7")
    assert lock.held and lock.holders() == {"grid-run 1": 1}
    lock.release("grid-run 1")

    assert not lock.held
    with pytest.raises(RuntimeError, match="not held by 'grid-run 1'"):
        lock.release("grid-run 1")


def test_an_update_is_refused_while_the_lock_is_held_and_release_calls_back_once() -> None:
    lock = UpdateLock()
    released: list[bool] = []
    lock.on_release(lambda: released.append(lock.held))

    with lock.hold("a"), lock.hold("b"), lock.updating() as free:
        assert free is False
    with lock.updating() as free:
        assert free is True

    assert released == [False]  # once, when the last holder let go, and it was free by then


def test_a_holder_waits_while_an_update_is_being_applied() -> None:
    lock = UpdateLock()
    acquired = threading.Event()

    with lock.updating() as free:
        assert free
        worker = threading.Thread(target=lambda: lock.acquire("grid-run") and acquired.set(), daemon=True)
        worker.start()
        assert not acquired.wait(0.2)
        assert lock.acquire("other", timeout=0.01) is False
    worker.join(5)

    assert acquired.is_set() and lock.holders() == {"grid-run": 1}


def test_a_crash_in_the_deploy_loop_ends_the_process_with_its_reason(tmp_path: Path) -> None:
    from edge_agent.deploy.agent import Agent, DeployLoop

    class BrokenLink:
        def poll(self) -> None:
            raise RuntimeError("a bug, not a link error")

    agent = Agent(tmp_path, BrokenLink())  # type: ignore[arg-type]
    process = AgentProcess([DeployLoop(agent, poll_interval=60, max_backoff=60)], check_interval=0.01)

    with pytest.raises(ServiceFailed) as raised:
        process.run()

    assert str(raised.value) == "service 'deploy' stopped unexpectedly: RuntimeError: a bug, not a link error"
