"""The JobRunner interface: run one training program in a controlled environment.

A job has its own directory on the controller's machine (``JobSpec.workdir``)::

    workdir/
      input/dataset.<ext>        the dataset, already checked against its chain record
      input/hyperparameters.json the training spec's hyperparameters
      output/                    the program writes its artifact here (see TRAINING_CONTRACT below)
      metrics.jsonl              the program appends one JSON object per line (progress, loss, accuracy...)
      job.log                    stdout + stderr, captured by the runner

Runners make these paths visible to the program under ``job_dir`` (the host path for the local runner,
``/job`` inside a container) and substitute ``{job_dir}`` in ``JobSpec.env`` values accordingly.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

TRAINING_CONTRACT = """\
A training program reads and writes only these (all paths absolute inside the job):
  FEDGE_JOB_DIR          the job directory
  FEDGE_DATASET_PATH     the dataset file (for .npz datasets: arrays 'x' and 'y')
  FEDGE_HYPERPARAMETERS  the hyper-parameters as a JSON object (also in input/hyperparameters.json)
  FEDGE_OUTPUT_DIR       write exactly one artifact here: 'model.pt2' / 'model.pt' (PyTorch: torch.export
                         or TorchScript), 'model.skops' / 'model.pkl' (scikit-learn) or 'model.onnx', plus
                         'model.json': {"framework": "pytorch|sklearn|onnx", "input_name": "x",
                         "input_shape": [null, 1, 8, 8], "input_dtype": "float32"}
  FEDGE_METRICS_FILE     append one JSON object per line: {"step": 3, "progress": 0.3, "loss": 0.2, ...}
Exit code 0 means success; anything else is a failed job. stdout/stderr are the job's log.
"""


class JobState(StrEnum):
    """Lifecycle of a job."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({JobState.SUCCEEDED.value, JobState.FAILED.value, JobState.CANCELLED.value})
"""Job states that never change again."""


@dataclass(frozen=True)
class JobSpec:
    """What to run and under which limits."""

    job_id: str
    workdir: Path
    command: list[str]  # argv, run with the job dir as working directory; "{job_dir}" is substituted
    env: dict[str, str] = field(default_factory=dict)  # "{job_dir}" in values is substituted
    image: str | None = None  # container image (container / kubernetes runners)
    timeout_s: float = 3600.0
    memory_bytes: int | None = 4 * 1024**3
    cpu_count: float | None = None
    max_output_bytes: int = 2 * 1024**3  # total size of output/ allowed
    max_log_bytes: int = 50 * 1024**2


@dataclass(frozen=True)
class JobOutcome:
    """How a run ended. ``reason`` is a sentence for humans when it did not succeed."""

    state: JobState
    exit_code: int | None = None
    reason: str | None = None


class JobRunner(ABC):
    """Runs one job to completion. Implementations: ``local`` (subprocess), ``container`` (Docker API),
    ``kubernetes`` (a Job per run)."""

    name: str

    @abstractmethod
    def run(self, spec: JobSpec, cancel: threading.Event) -> JobOutcome:
        """Run the job, blocking until it ends, times out (killed; FAILED with a reason) or ``cancel`` is
        set (killed; CANCELLED). Appends the program's stdout/stderr to ``workdir/job.log``; never raises
        for a failing program (only for a runner that cannot work at all: RunnerUnavailable)."""

    def health(self) -> None:  # noqa: B027 - optional hook
        """Raise RunnerUnavailable if this runner cannot start jobs."""


class RunnerUnavailable(Exception):
    """The runner's backend (Docker API, cluster) cannot be used."""


def request_cancel(
    sessions: sessionmaker[Session],
    model: type[Any],
    job_id: str,
    what: str,
    cancels: Mapping[str, threading.Event],
    lock: AbstractContextManager[Any],
) -> None:
    """Cancel a queued job row at once, or flag a running one for the replica running it (and wake its
    cancel event when it runs in this process). Shared by training and FL jobs, whose rows have the same
    ``state``/``error``/``finished_at``/``cancel_requested`` columns."""
    from controller.db.models import utcnow
    from controller.errors import Conflict, NotFound

    with sessions.begin() as s:
        job = s.get(model, job_id)
        if job is None:
            raise NotFound(f"{what} {job_id} not found")
        if job.state in TERMINAL:
            raise Conflict(f"{what} {job_id} already ended ({job.state})", job_status=job.state)
        if job.state == JobState.QUEUED.value:
            job.state = JobState.CANCELLED.value
            job.error = "cancelled before it started"
            job.finished_at = utcnow()
        else:
            job.cancel_requested = True
    with lock:
        event = cancels.get(job_id)
    if event is not None:
        event.set()
