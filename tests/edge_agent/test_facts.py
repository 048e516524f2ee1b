"""Hardware facts reported by the agent."""

from __future__ import annotations

import json
import subprocess
import sys

from edge_agent.facts import hardware_facts


def test_facts_include_cpu_ram_and_ort_providers() -> None:
    facts = hardware_facts()
    assert facts["cpu_count"] >= 1
    assert facts["ram_bytes"] > 100 * 1024 * 1024
    assert "CPUExecutionProvider" in facts["ort_providers"]
    assert facts["cuda_available"] == ("CUDAExecutionProvider" in facts["ort_providers"])


def test_cli_prints_facts_as_json() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", "facts"], capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout)["arch"]
