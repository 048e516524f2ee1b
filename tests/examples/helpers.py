"""Run the example training programs as the training contract says: a job directory and FEDGE_* variables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
# quick but still > 90% holdout accuracy; one thread each so that two cores shared with others suffice
HYPERPARAMETERS: dict[str, dict[str, Any]] = {
    "digits_cnn": {"epochs": 8, "seed": 0, "threads": 1},
    "digits_sklearn": {"seed": 0},
}
ARTIFACTS = {"digits_cnn": "model.pt2", "digits_sklearn": "model.skops"}


@dataclass(frozen=True)
class Job:
    """A job directory laid out as in ``controller.training.base`` and the finished program's outcome."""

    workdir: Path
    process: subprocess.CompletedProcess[str]

    @property
    def output(self) -> Path:
        return self.workdir / "output"

    @property
    def metrics(self) -> list[dict[str, Any]]:
        path = self.workdir / "metrics.jsonl"
        lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
        return [json.loads(line) for line in lines]

    @property
    def model_json(self) -> dict[str, Any]:
        meta: dict[str, Any] = json.loads((self.output / "model.json").read_text(encoding="utf-8"))
        return meta


def write_dataset(path: Path) -> Path:
    from examples.make_digits_npz import write_digits_npz

    return write_digits_npz(path)


def run_example(
    name: str,
    workdir: Path,
    dataset: Path,
    hyperparameters: dict[str, Any],
    *,
    as_script: bool = False,
    timeout: float = 240,
) -> Job:
    """Run ``examples/<name>/train.py`` (as a module, or as a script path) in ``workdir``."""
    (workdir / "input").mkdir(parents=True, exist_ok=True)
    (workdir / "output").mkdir(exist_ok=True)
    (workdir / "input" / "hyperparameters.json").write_text(json.dumps(hyperparameters), encoding="utf-8")
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "FEDGE_JOB_DIR": str(workdir),
        "FEDGE_DATASET_PATH": str(dataset),
        "FEDGE_HYPERPARAMETERS": json.dumps(hyperparameters),
        "FEDGE_OUTPUT_DIR": str(workdir / "output"),
        "FEDGE_METRICS_FILE": str(workdir / "metrics.jsonl"),
        "PYTHONPATH": str(ROOT),
    }
    target = [str(ROOT / "examples" / name / "train.py")] if as_script else ["-m", f"examples.{name}.train"]
    process = subprocess.run(
        [sys.executable, *target], cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout
    )
    return Job(workdir, process)


def trained_example(tmp_path_factory: pytest.TempPathFactory, name: str) -> Job:
    """The example trained once per test session (shared by tests/examples and tests/controller/translation)."""
    base = tmp_path_factory.getbasetemp()
    dataset = base / "digits.npz"
    if not dataset.exists():
        write_dataset(dataset)
    workdir = base / f"trained-{name}"
    done = workdir / "done.json"
    if done.exists():
        saved = json.loads(done.read_text(encoding="utf-8"))
        return Job(
            workdir,
            subprocess.CompletedProcess(saved["args"], saved["returncode"], saved["stdout"], saved["stderr"]),
        )
    job = run_example(name, workdir, dataset, HYPERPARAMETERS[name], as_script=name == "digits_sklearn")
    assert job.process.returncode == 0, job.process.stderr[-3000:]
    done.write_text(
        json.dumps(
            {
                "args": job.process.args,
                "returncode": job.process.returncode,
                "stdout": job.process.stdout,
                "stderr": job.process.stderr,
            }
        ),
        encoding="utf-8",
    )
    return job


def digits() -> tuple[Any, Any]:
    """The digits as ``(x [N, 1, 8, 8] float32, y int64)``."""
    from examples.make_digits_npz import load_digits_arrays

    return load_digits_arrays()
