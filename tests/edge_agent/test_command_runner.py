"""The agent's command runner: an interrupted command is reported failed instead of staying 'running'."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edge_agent.grid import RUNNING_FILE, CommandRunner


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
