"""Process logging for both sides (``fedge-controller serve``, ``fedge-agent run``): ``text`` (the default,
one human line) or ``json`` (one JSON object a line: ``ts``, ``level``, ``logger``, ``message`` and,
where known, ``request_id``, ``device_id``, ``deployment_id``).

The fields come from a record's ``extra=`` or else from the context variables below (the controller's
request-id middleware sets :data:`request_id` for everything a request logs, uvicorn's access line
included). uvicorn's loggers go through the same handler (run it with ``log_config=None``). Successful
polls are not worth a line at INFO: the controller's access lines for desired-state/command polls that
succeeded (2xx, 304) and httpx's per-request lines are demoted to DEBUG.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

LogFormat = Literal["json", "text"]
FORMATS: tuple[LogFormat, ...] = ("json", "text")
FIELDS = ("request_id", "device_id", "deployment_id")

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("fedge_request_id", default=None)
device_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("fedge_device_id", default=None)
deployment_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "fedge_deployment_id", default=None
)
_VARS = {"request_id": request_id, "device_id": device_id, "deployment_id": deployment_id}
_PROCESS: dict[str, str] = {}
"""Fields for every line of this process (the agent's device id: its threads do not share contexts)."""


def set_process_fields(**fields: str | None) -> None:
    """Fields every record of the process carries unless the record or the context says otherwise."""
    for name, value in fields.items():
        if name not in _VARS:
            raise ValueError(f"unknown log field {name!r}")
        if value is None:
            _PROCESS.pop(name, None)
        else:
            _PROCESS[name] = value


POLL_PATH = re.compile(r"^/v1/devices/[^/]+/(desired-state|commands)(\?|$)")
"""Routes devices poll (see fedge_protocol.paths): their successful access lines are DEBUG."""


@contextmanager
def bound(**fields: str | None) -> Iterator[None]:
    """Set some of :data:`FIELDS` for the code inside (this thread / task only)."""
    tokens = [(_VARS[k], _VARS[k].set(v)) for k, v in fields.items()]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def fields_of(record: logging.LogRecord) -> dict[str, str]:
    """The known context fields of a record: its ``extra=`` first, else the context variables."""
    out = {}
    for name in FIELDS:
        value = getattr(record, name, None)
        if value is None:
            value = _VARS[name].get()
        if value is None:
            value = _PROCESS.get(name)
        if value is not None:
            out[name] = str(value)
    return out


class JsonFormatter(logging.Formatter):
    """One JSON object a line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **fields_of(record),
        }
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    """``ts LEVEL logger: message [k=v ...]``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = fields_of(record)
        if fields:
            text += " [" + " ".join(f"{k}={v}" for k, v in fields.items()) + "]"
        return text


class QuietPolls(logging.Filter):
    """On ``uvicorn.access``: a successful poll's line becomes DEBUG (dropped unless DEBUG is on)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        # uvicorn's access record: (client, method, full_path, http_version, status_code)
        if not (isinstance(args, tuple) and len(args) == 5):
            return True
        method, path, status = args[1], str(args[2]), args[4]
        if method == "GET" and POLL_PATH.match(path) and isinstance(status, int) and status < 400:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


def formatter(fmt: LogFormat) -> logging.Formatter:
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r} is not one of {', '.join(FORMATS)}")
    return JsonFormatter() if fmt == "json" else TextFormatter()


def configure(fmt: LogFormat = "text", level: int | str = logging.INFO, stream: Any = None) -> None:
    """One stderr handler on the root logger with the chosen format; uvicorn's loggers propagate to it
    (access lines included); httpx's per-request INFO lines only at DEBUG."""
    if isinstance(level, str):
        named = logging.getLevelName(level.upper())
        if not isinstance(named, int):
            raise ValueError(f"log level {level!r} is unknown")
        level = named
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter(fmt))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        for old in list(lg.handlers):
            lg.removeHandler(old)
        lg.propagate = True
        lg.setLevel(level)
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, QuietPolls) for f in access.filters):
        access.addFilter(QuietPolls())
    for name in ("httpx", "httpcore"):  # "HTTP Request: GET ... 304" for every poll
        logging.getLogger(name).setLevel(max(logging.WARNING, level) if level > logging.DEBUG else level)
