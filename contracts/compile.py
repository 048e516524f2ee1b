"""Compile contracts/src/*.sol with the pinned npm solc (solcjs --standard-json) into contracts/build/.

usage: python contracts/compile.py [--check]

Writes one JSON file per contract (ABI, creation and runtime bytecode, compiler settings), keys sorted,
so the committed artifacts are reproducible byte for byte. With --check nothing is written; the exit
status is 1 when the committed artifacts differ from a fresh compilation.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CONTRACTS_DIR = Path(__file__).resolve().parent
SRC_DIR = CONTRACTS_DIR / "src"
BUILD_DIR = CONTRACTS_DIR / "build"
REPO_ROOT = CONTRACTS_DIR.parent
SOLCJS = REPO_ROOT / "node_modules" / ".bin" / "solcjs"

SOLC_VERSION = "0.8.37"
EVM_VERSION = "prague"
OPTIMIZER = {"enabled": True, "runs": 200}


def standard_json_input(src_dir: Path = SRC_DIR) -> dict[str, object]:
    """The solc standard-JSON input for every source, with source names relative to contracts/."""
    sources = {
        f"src/{path.name}": {"content": path.read_text(encoding="utf-8")}
        for path in sorted(src_dir.glob("*.sol"))
    }
    if not sources:
        raise SystemExit(f"no .sol files in {src_dir}")
    return {
        "language": "Solidity",
        "sources": sources,
        "settings": {
            "evmVersion": EVM_VERSION,
            "optimizer": OPTIMIZER,
            "metadata": {"bytecodeHash": "ipfs"},
            "outputSelection": {
                "*": {"*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object", "metadata"]}
            },
        },
    }


def run_solcjs(standard_input: dict[str, object], solcjs: Path = SOLCJS) -> dict[str, object]:
    """Run solcjs in standard-JSON mode; fail on any compiler error."""
    if not solcjs.exists():
        raise SystemExit(f"{solcjs} not found: run `npm install` in {REPO_ROOT}")
    # stdout goes to a file, not a pipe: solcjs exits before a large piped output is flushed.
    with tempfile.TemporaryFile(mode="w+", encoding="utf-8") as out:
        proc = subprocess.run(
            [str(solcjs), "--standard-json"],
            input=json.dumps(standard_input),
            stdout=out,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
            timeout=300,
        )
        out.seek(0)
        text = out.read()
    if proc.returncode != 0:
        raise SystemExit(f"solcjs failed ({proc.returncode}): {proc.stderr.strip()}")
    # solcjs may print notices (e.g. about SMT solvers) before the JSON document.
    start = text.find("{")
    if start < 0:
        raise SystemExit(f"solcjs produced no JSON: {text[:500]!r}")
    output: dict[str, object] = json.loads(text[start:])
    problems = [e for e in output.get("errors", []) if isinstance(e, dict)]  # type: ignore[union-attr]
    for problem in problems:
        print(problem.get("formattedMessage", problem), file=sys.stderr)
    if any(p.get("severity") == "error" for p in problems):
        raise SystemExit("compilation failed")
    return output


def build_artifacts(src_dir: Path = SRC_DIR, solcjs: Path = SOLCJS) -> dict[str, str]:
    """Compile and return {file name in build/: JSON text} for every contract."""
    standard_input = standard_json_input(src_dir)
    output = run_solcjs(standard_input, solcjs)
    artifacts: dict[str, str] = {}
    contracts = output["contracts"]
    assert isinstance(contracts, dict)
    for source_name, by_name in sorted(contracts.items()):
        for name, compiled in sorted(by_name.items()):
            metadata = json.loads(compiled["metadata"])
            compiler = metadata["compiler"]["version"]
            if not compiler.startswith(SOLC_VERSION + "+"):
                raise SystemExit(f"solc {compiler} found, {SOLC_VERSION} pinned in package.json")
            source_text = standard_input["sources"][source_name]["content"]  # type: ignore[index]
            artifact = {
                "contractName": name,
                "sourceName": source_name,
                "sourceSha256": hashlib.sha256(source_text.encode("utf-8")).hexdigest(),
                "compiler": compiler,
                "evmVersion": metadata["settings"]["evmVersion"],
                "optimizer": metadata["settings"]["optimizer"],
                "abi": compiled["abi"],
                "bytecode": "0x" + compiled["evm"]["bytecode"]["object"],
                "deployedBytecode": "0x" + compiled["evm"]["deployedBytecode"]["object"],
            }
            artifacts[f"{name}.json"] = json.dumps(artifact, indent=2, sort_keys=True) + "\n"
    return artifacts


def committed_artifacts(build_dir: Path = BUILD_DIR) -> dict[str, str]:
    """The artifacts currently in build/."""
    return {path.name: path.read_text(encoding="utf-8") for path in sorted(build_dir.glob("*.json"))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with contracts/build/, write nothing")
    args = parser.parse_args(argv)
    fresh = build_artifacts()
    if args.check:
        stale = sorted(set(fresh) ^ set(committed_artifacts()))
        stale += sorted(n for n, text in fresh.items() if committed_artifacts().get(n, text) != text)
        if stale:
            print("contracts/build is out of date: " + ", ".join(stale), file=sys.stderr)
            return 1
        print(f"contracts/build is up to date ({len(fresh)} contracts)")
        return 0
    BUILD_DIR.mkdir(exist_ok=True)
    for old in BUILD_DIR.glob("*.json"):
        if old.name not in fresh:
            old.unlink()
    for name, text in fresh.items():
        (BUILD_DIR / name).write_text(text, encoding="utf-8")
    print(f"wrote {len(fresh)} artifacts to {BUILD_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
