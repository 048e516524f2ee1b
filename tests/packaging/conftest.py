"""Packaging tests: those marked ``stack`` bring up the podman compose stack (packaging/compose) and run
only when the ``-m`` expression mentions ``stack`` (``make test-stack``); otherwise they are deselected and
counted in a summary line."""

from __future__ import annotations

import pytest

_DESELECTED = pytest.StashKey[int]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "stack" in (config.getoption("markexpr", "") or ""):
        return
    stack = [item for item in items if item.get_closest_marker("stack")]
    if stack:
        config.hook.pytest_deselected(items=stack)
        items[:] = [item for item in items if not item.get_closest_marker("stack")]
        config.stash[_DESELECTED] = config.stash.get(_DESELECTED, 0) + len(stack)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    count = config.stash.get(_DESELECTED, 0)
    if count:
        terminalreporter.write_line(
            f"stack: {count} tests need the compose stack and were deselected (make test-stack)"
        )
