"""The agent's install stays as small as it is on purpose: the closure of ``fedge[agent]``'s requirements
(read from the installed distributions' metadata, markers evaluated for this interpreter, extras
followed) must equal packaging/agent-packages.txt, and the files those distributions install (their
RECORD) must fit the budget written there."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
BUDGET_FILE = ROOT / "packaging" / "agent-packages.txt"
# never on a device that only infers: the controller's server and chain stack, the training extra
SERVER_OR_TRAINING = {
    "torch", "fastapi", "starlette", "uvicorn", "web3", "sqlalchemy", "flwr", "opacus", "tenseal",
}  # fmt: skip


def requirement_closure(root: str, extras: frozenset[str]) -> dict[str, frozenset[str]]:
    """Every distribution ``root[extras]`` needs here, with the extras asked of it."""
    asked: dict[str, frozenset[str]] = {}
    todo = [(root, extras)]
    while todo:
        name, want = todo.pop()
        key = canonicalize_name(name)
        if key in asked and want <= asked[key]:
            continue
        asked[key] = asked.get(key, frozenset()) | want
        for raw in metadata.distribution(name).requires or []:
            req = Requirement(raw)
            environments = [{"extra": extra} for extra in asked[key] | {""}]
            if req.marker is None or any(req.marker.evaluate(env) for env in environments):
                todo.append((req.name, frozenset(req.extras)))
    return asked


def budget() -> tuple[set[str], float]:
    text = BUDGET_FILE.read_text()
    found = re.search(r"^# budget-mib: (\d+)$", text, re.MULTILINE)
    assert found, f"{BUDGET_FILE} has no '# budget-mib: N' line"
    names = {line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")}
    return names, float(found.group(1))


def installed_mib(name: str) -> float:
    files = metadata.distribution(name).files or []
    return sum(f.size or 0 for f in files) / 2**20


def test_closure_follows_extras_and_markers() -> None:
    # the core dependencies only, then the agent extra on top: strictly more, and never the controller's
    core = set(requirement_closure("fedge", frozenset())) - {"fedge"}
    agent = set(requirement_closure("fedge", frozenset({"agent"}))) - {"fedge"}
    assert {"httpx", "pydantic", "typer"} <= core < agent
    assert {"onnxruntime", "paho-mqtt"} <= agent - core
    controller = set(requirement_closure("fedge", frozenset({"controller"})))
    assert "fastapi" in controller and "fastapi" not in agent


def test_agent_install_does_not_grow() -> None:
    names, budget_mib = budget()
    closure = set(requirement_closure("fedge", frozenset({"agent"}))) - {"fedge"}
    joined, left = sorted(closure - names), sorted(names - closure)
    assert not joined and not left, (
        f"fedge[agent] now installs {joined} and no longer {left}: if on purpose, update {BUDGET_FILE.name} "
        "and the README's agent install size"
    )
    assert {"onnxruntime", "numpy", "cryptography", "httpx"} <= closure
    assert not closure & SERVER_OR_TRAINING
    size = sum(installed_mib(n) for n in closure)
    assert size <= budget_mib, f"fedge[agent] installs {size:.1f} MiB, over the {budget_mib:.0f} MiB budget"
