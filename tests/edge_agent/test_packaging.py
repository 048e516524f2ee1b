"""The agent package imports no controller or server code (what `fedge[agent]` installs is checked, with its
whole requirement closure, in tests/packaging/test_agent_size.py)."""

from __future__ import annotations

import re
from pathlib import Path

# The training room (``edge_agent/learning/``, the ``train`` extra) may use torch, opacus and flwr; these
# of its modules are what the base agent imports (the SuperNode service, fl-join checks, the round lock)
# and must stay as light as the rest of the agent.
TRAIN_ROOM = "learning"
LIGHT_TRAIN_MODULES = ("__init__.py", "supernode.py", "join.py", "roundlock.py")


def test_the_agent_package_does_not_import_controller_or_server_code() -> None:
    root = Path(__file__).parents[2] / "edge_agent"
    banned = re.compile(
        r"^\s*(?:import|from)\s+(controller|fastapi|starlette|uvicorn|torch|web3|jwt)\b", re.M
    )
    server_only = re.compile(r"^\s*(?:import|from)\s+(controller|fastapi|starlette|uvicorn|web3|jwt)\b", re.M)
    for path in root.rglob("*.py"):
        heavy_allowed = path.parent.name == TRAIN_ROOM and path.name not in LIGHT_TRAIN_MODULES
        found = (server_only if heavy_allowed else banned).search(path.read_text())
        assert found is None, f"{path} imports {found.group(1) if found else ''}"


def test_the_agent_cli_and_the_fl_service_import_without_torch_or_flwr() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import edge_agent.cli, edge_agent.learning.supernode, edge_agent.learning.join\n"
        "import edge_agent.learning.roundlock\n"
        "heavy = sorted(m for m in ('torch', 'flwr', 'opacus', 'controller') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    root = Path(__file__).parents[2]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
