"""The agent's command runner and command polling."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edge_agent.deploy.agent import Agent
from edge_agent.grid import RUNNING_FILE, CommandRunner
from edge_agent.link.client import LinkError


def _runner(tmp_path: Path) -> tuple[CommandRunner, list[dict[str, Any]]]:
    records: list[dict[str, Any]] = []

    def record(body: dict[str, Any]) -> int:
        records.append(body)
        return len(records)

    return CommandRunner(tmp_path, link=None, record=record), records


def test_a_command_interrupted_by_a_restart_is_reported_failed_once(tmp_path: Path) -> None:
    (tmp_path / RUNNING_FILE).write_text("cmd-1")
    runner, records = _runner(tmp_path)

    assert runner.fail_interrupted() == "cmd-1"
    assert runner.fail_interrupted() is None

    assert len(records) == 1
    assert records[0]["command_id"] == "cmd-1" and records[0]["state"] == "failed"
    assert "stopped while this command was running" in records[0]["error"]
    assert not (tmp_path / RUNNING_FILE).exists()


def test_a_finished_command_leaves_no_marker_and_runs_only_once(tmp_path: Path) -> None:
    runner, records = _runner(tmp_path)
    runner.start()
    try:
        # An unknown kind fails inside run_command (recorded), the way any finished command ends.
        assert runner.submit({"command_id": "cmd-2", "kind": "reboot", "model": {}})
        assert not runner.submit({"command_id": "cmd-2", "kind": "reboot", "model": {}})
        assert runner.idle.wait(10)
    finally:
        runner.stop()

    assert [r["state"] for r in records] == ["running", "failed"]
    assert "does not know command kind" in records[-1]["error"]
    assert not (tmp_path / RUNNING_FILE).exists()
    restarted, again = _runner(tmp_path)
    assert not restarted.submit({"command_id": "cmd-2", "kind": "reboot", "model": {}})
    assert restarted.fail_interrupted() is None and again == []


class _OldControllerLink:
    """A link to a controller that predates device commands (the route answers 404)."""

    def __init__(self, status: int) -> None:
        self.status, self.calls = status, 0

    def pending_commands(self) -> list[dict[str, Any]]:
        self.calls += 1
        raise LinkError(f"commands: {self.status} Not Found", self.status)


def test_an_agent_stops_polling_commands_on_a_controller_without_the_route(tmp_path: Path) -> None:
    link = _OldControllerLink(404)
    runner, _ = _runner(tmp_path)
    agent = Agent(tmp_path, link, commands=runner)  # type: ignore[arg-type]

    agent.poll_commands()
    agent.poll_commands()

    assert link.calls == 1


def test_other_command_poll_errors_still_reach_the_backoff(tmp_path: Path) -> None:
    link = _OldControllerLink(503)
    runner, _ = _runner(tmp_path)
    agent = Agent(tmp_path, link, commands=runner)  # type: ignore[arg-type]

    for _ in range(2):
        with pytest.raises(LinkError):
            agent.poll_commands()
    assert link.calls == 2


def test_a_running_command_holds_the_update_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import edge_agent.grid as grid
    from edge_agent.process import UpdateLock

    lock = UpdateLock()
    seen: list[dict[str, int]] = []

    def run(payload: dict[str, Any], *_: Any) -> None:
        seen.append(lock.holders())

    monkeypatch.setattr(grid, "run_command", run)
    runner = CommandRunner(tmp_path, link=None, record=lambda body: 0, update_lock=lock)
    runner.start()
    try:
        assert runner.submit({"command_id": "cmd-3", "kind": "grid-run", "model": {}})
        assert runner.idle.wait(10)
    finally:
        runner.stop()

    assert seen == [{"grid-run cmd-3": 1}]
    assert not lock.held
