"""Packaging tests: those marked ``stack`` bring up the podman compose stack (packaging/compose) and run
only when the ``-m`` expression mentions ``stack`` (``make test-stack``); otherwise they are deselected and
counted in a summary line."""

from __future__ import annotations

import pytest

from tests.fixtures.opt_in import OptInMarker

_STACK = OptInMarker("stack", why="need the compose stack and were deselected (make test-stack)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    _STACK.deselect(config, items)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    _STACK.summary(terminalreporter, config)
