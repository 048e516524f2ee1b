"""The CLIs speak in sentences: a user error is one line with the fix, exit 2 for usage and 1 for
failures, no traceback unless --debug."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def _run(module: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) <= 2, proc.stderr  # the sentence (rich may wrap it once)
    return " ".join(lines)


def test_unreachable_controller_is_one_line_exit_1() -> None:
    proc = _run(
        "controller.user_cli", "--controller", "http://127.0.0.1:9", "--token", "t", "datasets", "list"
    )
    assert proc.returncode == 1
    line = _one_line_error(proc)
    assert "cannot reach http://127.0.0.1:9" in line and "Is it running" in line


def test_debug_shows_the_traceback() -> None:
    proc = _run(
        "controller.user_cli",
        "--debug",
        "--controller",
        "http://127.0.0.1:9",
        "--token",
        "t",
        "datasets",
        "list",
    )
    assert proc.returncode == 1 and "Traceback" in proc.stderr


def test_bad_option_values_are_usage_errors_exit_2(tmp_path: Path) -> None:
    src = tmp_path / "d.bin"
    src.write_bytes(b"x")
    bad_json = _run(
        "controller.user_cli", "--controller", "http://127.0.0.1:9", "datasets", "push", str(src),
        "--org", "o", "--dims", "(1,)", "--metadata", "{bad",
    )  # fmt: skip
    assert bad_json.returncode == 2 and "Traceback" not in bad_json.stderr
    assert "--metadata" in bad_json.stderr and "not valid JSON" in bad_json.stderr
    not_object = _run(
        "controller.user_cli", "--controller", "http://127.0.0.1:9", "datasets", "push", str(src),
        "--org", "o", "--dims", "(1,)", "--metadata", "[1]",
    )  # fmt: skip
    assert not_object.returncode == 2 and "expected a JSON object" in not_object.stderr
    waves = _run("controller.user_cli", "--controller", "http://127.0.0.1:9", "deploy", "m", "--waves", "a,b")
    assert waves.returncode == 2 and "--waves" in waves.stderr and "Traceback" not in waves.stderr


def test_admin_token_without_a_data_dir_says_what_to_do(tmp_path: Path) -> None:
    proc = _run("controller.cli", "admin-token", env={"FEDGE_DATA_DIR": str(tmp_path / "nowhere")})
    assert proc.returncode == 1
    line = _one_line_error(proc)
    assert "no controller data in" in line and "fedge-controller serve" in line
    assert not (tmp_path / "nowhere").exists()  # nothing created by a failed admin command


# Commands whose output is a stream, a file or an interactive view rather than a result document.
NO_JSON = {"login", "jobs watch", "jobs logs", "models get", "models pull", "deployments watch"}


def test_every_command_but_streams_and_files_has_json() -> None:
    from typer.main import get_command

    from controller.user_cli import app

    def walk(command: object, prefix: list[str]) -> list[tuple[str, bool]]:
        children = getattr(command, "commands", None)
        if children is not None:
            return [row for name, sub in children.items() for row in walk(sub, [*prefix, name])]
        flags = [o for p in getattr(command, "params", []) for o in p.opts]
        return [(" ".join(prefix), "--json" in flags)]

    rows = walk(get_command(app), [])
    assert len(rows) > 40
    missing = sorted(name for name, has in rows if not has and name not in NO_JSON)
    assert missing == [], f"commands without --json: {missing}"
