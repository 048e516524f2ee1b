"""fedge_common.logs: JSON and text lines with the context fields, uvicorn's access lines through the same
handler, successful polls demoted to DEBUG, and the CLIs' --log-format."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedge_common import logs

ACCESS_NAMES = ("uvicorn", "uvicorn.error", "uvicorn.access", "httpx", "httpcore", "")


@pytest.fixture
def restore_logging() -> Iterator[None]:
    saved = {
        n: (lg.level, list(lg.handlers), list(lg.filters), lg.propagate)
        for n in ACCESS_NAMES
        for lg in [logging.getLogger(n or None)]
    }
    try:
        yield
    finally:
        logs.set_process_fields(device_id=None, request_id=None, deployment_id=None)
        for n, (level, handlers, filters, propagate) in saved.items():
            lg = logging.getLogger(n or None)
            lg.setLevel(level)
            lg.handlers[:] = handlers
            lg.filters[:] = filters
            lg.propagate = propagate


def _configured(fmt: logs.LogFormat, level: int = logging.INFO) -> io.StringIO:
    stream = io.StringIO()
    logs.configure(fmt, level, stream=stream)
    return stream


def _access(status: int, path: str, method: str = "GET") -> None:
    # what uvicorn's h11/httptools protocols log for every response
    logging.getLogger("uvicorn.access").info(
        '%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", method, path, "1.1", status
    )


def test_json_lines_carry_ts_level_logger_message_and_the_known_fields(restore_logging: None) -> None:
    out = _configured("json")
    log = logging.getLogger("fedge.test")
    logs.set_process_fields(device_id="dev-1")
    log.info("plain %s", "line")
    with logs.bound(request_id="req-1", deployment_id="dep-1"):
        log.warning("inside")
    log.info("explicit", extra={"deployment_id": "dep-2"})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["message"] for line in lines] == ["plain line", "inside", "explicit", "failed"]
    first = lines[0]
    assert set(first) == {"ts", "level", "logger", "message", "device_id"}
    assert first["level"] == "INFO" and first["logger"] == "fedge.test" and first["ts"].endswith("+00:00")
    assert lines[1]["request_id"] == "req-1" and lines[1]["deployment_id"] == "dep-1"
    assert lines[1]["device_id"] == "dev-1" and lines[1]["level"] == "WARNING"
    assert lines[2]["deployment_id"] == "dep-2" and "request_id" not in lines[2]  # context was reset
    assert "ValueError: boom" in lines[3]["exc"]


def test_text_lines_append_the_fields(restore_logging: None) -> None:
    out = _configured("text")
    with logs.bound(request_id="abc"):
        logging.getLogger("fedge.test").info("hello")
    logging.getLogger("fedge.test").info("bare")
    first, second = out.getvalue().splitlines()
    assert first.endswith("INFO fedge.test: hello [request_id=abc]")
    assert second.endswith("INFO fedge.test: bare")


def test_successful_polls_have_no_info_line_other_requests_do(restore_logging: None) -> None:
    out = _configured("json")
    _access(304, "/v1/devices/d-1/desired-state")
    _access(200, "/v1/devices/d-1/desired-state")
    _access(200, "/v1/devices/d-1/commands?state=queued")
    _access(503, "/v1/devices/d-1/desired-state")  # a failing poll is worth a line
    _access(201, "/v1/devices/d-1/status", "POST")
    _access(200, "/v1/models")
    logging.getLogger("httpx").info("HTTP Request: GET http://c/v1/devices/d/desired-state 304")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["logger"] for line in lines] == ["uvicorn.access"] * 3
    assert "503" in lines[0]["message"] and "/status" in lines[1]["message"]
    assert "/v1/models" in lines[2]["message"]
    assert all(line["level"] == "INFO" for line in lines)

    out = _configured("json", logging.DEBUG)  # at DEBUG they are there, as DEBUG
    _access(304, "/v1/devices/d-1/desired-state")
    (line,) = [json.loads(x) for x in out.getvalue().splitlines()]
    assert line["level"] == "DEBUG" and "desired-state" in line["message"]


def test_configure_refuses_an_unknown_format(restore_logging: None) -> None:
    with pytest.raises(ValueError, match="not one of json, text"):
        logs.configure("xml")  # type: ignore[arg-type]


def test_the_clis_refuse_an_unknown_log_format(tmp_path: Path) -> None:
    from controller.cli import app as controller_app
    from edge_agent.cli import app as agent_app

    runner = CliRunner()
    agent = runner.invoke(agent_app, ["run", "--state-dir", str(tmp_path), "--log-format", "xml"])
    controller = runner.invoke(controller_app, ["serve", "--log-format", "xml"])
    for result in (agent, controller):
        assert result.exit_code == 2, result.output
        assert "--log-format" in result.output and "text or json" in result.output
