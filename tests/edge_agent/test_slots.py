"""Model slots: the ``failed`` pointer has one writer, ``SlotStore.mark_failed``."""

from __future__ import annotations

import re
from pathlib import Path

from edge_agent.deploy.plan import ModelRef
from edge_agent.deploy.slots import SlotStore


def test_the_failed_pointer_has_one_writer(tmp_path: Path) -> None:
    slots = SlotStore(tmp_path)
    v1, v2 = ModelRef("m", 1, "a" * 64), ModelRef("m", 2, "b" * 64)
    slots.mark_failed(v2)
    slots.activate(v1)
    slots.confirm()  # a healthy version clears the last failure
    assert slots.current().failed is None
    slots.activate(v2)

    assert slots.rollback() == v1  # records v2 as failed

    assert slots.current().failed == v2
    root = Path(__file__).parents[2]
    writers = [
        f"{path.relative_to(root)}"
        for package in ("edge_agent", "simulator")
        for path in (root / package).rglob("*.py")
        if re.search(r"""\.write\(\s*["']failed["']""", path.read_text())
    ]
    assert writers == ["edge_agent/deploy/slots.py"]  # SlotStore.mark_failed; everyone else calls it
