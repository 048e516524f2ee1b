"""The committed contract artifacts are exactly what the pinned compiler makes of the sources."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[3]
CONTRACTS = ROOT / "contracts"


@pytest.fixture(scope="module")
def compile_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fedge_contracts_compile", CONTRACTS / "compile.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_recompiling_reproduces_committed_artifacts(compile_module: ModuleType) -> None:
    fresh = compile_module.build_artifacts()
    committed = compile_module.committed_artifacts()
    assert (
        sorted(fresh) == sorted(committed) == ["DatasetRecord.json", "FedgeRegistry.json", "ModelRecord.json"]
    )
    for name, text in fresh.items():
        assert text == committed[name], f"contracts/build/{name} is stale: run python contracts/compile.py"


def test_artifacts_name_pinned_compiler_and_prague() -> None:
    for path in sorted((CONTRACTS / "build").glob("*.json")):
        artifact = json.loads(path.read_text())
        assert artifact["compiler"].startswith("0.8.37+"), path
        assert artifact["evmVersion"] == "prague", path
        assert artifact["bytecode"].startswith("0x60") and artifact["deployedBytecode"].startswith("0x60"), (
            path
        )


def test_package_json_pins_solc() -> None:
    package = json.loads((ROOT / "package.json").read_text())
    assert package["dependencies"]["solc"] == "0.8.37"


def test_sources_have_spdx_and_pinned_pragma() -> None:
    for path in sorted((CONTRACTS / "src").glob("*.sol")):
        lines = path.read_text().splitlines()
        assert lines[0].startswith("// SPDX-License-Identifier: "), path
        assert lines[1] == "pragma solidity 0.8.37;", path


def test_every_external_function_event_and_error_has_natspec() -> None:
    declaration = re.compile(r"^\s*(function \w+\(.*\)[^;]*\b(external|public)\b|event \w+|error \w+)")
    for path in sorted((CONTRACTS / "src").glob("*.sol")):
        text = path.read_text()
        lines = text.splitlines()
        for number, line in enumerate(lines):
            if not declaration.match(line) and not (
                line.strip().startswith("function") and _signature_is_external(lines, number)
            ):
                continue
            above = lines[number - 1].strip()
            assert above.startswith("///"), f"{path.name}:{number + 1} lacks NatSpec: {line.strip()}"


def _signature_is_external(lines: list[str], start: int) -> bool:
    for line in lines[start : start + 12]:
        if "{" in line or ";" in line:
            return bool(re.search(r"\b(external|public)\b", line))
        if re.search(r"\b(external|public)\b", line):
            return True
    return False
