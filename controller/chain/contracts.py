"""Compiled contract artifacts (ABI + bytecode) committed under contracts/build/."""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.chain.errors import ChainError

REGISTRY = "FedgeRegistry"
DATASET_RECORD = "DatasetRecord"
MODEL_RECORD = "ModelRecord"
ALL_CONTRACTS = (REGISTRY, DATASET_RECORD, MODEL_RECORD)

BUILD_DIR_ENV = "FEDGE_CONTRACTS_BUILD"


def build_dir() -> Path:
    """$FEDGE_CONTRACTS_BUILD, else contracts/build/ of the source tree this package lives in."""
    configured = os.environ.get(BUILD_DIR_ENV)
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parents[2] / "contracts" / "build"


@dataclass(frozen=True)
class CompiledContract:
    name: str
    abi: list[dict[str, Any]]
    bytecode: bytes
    deployed_bytecode: bytes


@functools.cache
def load_contract(name: str) -> CompiledContract:
    """Read one contract's artifact; ChainError if the build directory lacks it."""
    path = build_dir() / f"{name}.json"
    try:
        artifact = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ChainError(
            f"compiled contract {path} not readable ({exc}); set {BUILD_DIR_ENV} or run "
            "`python contracts/compile.py`"
        ) from None
    return CompiledContract(
        name=name,
        abi=artifact["abi"],
        bytecode=bytes.fromhex(artifact["bytecode"].removeprefix("0x")),
        deployed_bytecode=bytes.fromhex(artifact["deployedBytecode"].removeprefix("0x")),
    )
