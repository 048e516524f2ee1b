"""LocalJobRunner specifics (the shared behaviour is in tests/conformance/test_runner_conformance.py)."""

from __future__ import annotations

import json
import resource
import sys
import threading
from pathlib import Path

from controller.training.base import JobSpec, JobState
from controller.training.local import TRUNCATED_MARKER, CappedLog, LocalJobRunner


def spec_for(tmp_path: Path, code: str, **kw: object) -> JobSpec:
    workdir = tmp_path / "job"
    (workdir / "output").mkdir(parents=True, exist_ok=True)
    fields: dict[str, object] = {
        "job_id": "j-1",
        "workdir": workdir,
        "command": [sys.executable, "-c", code],
        "env": {"FEDGE_OUTPUT_DIR": "{job_dir}/output"},
        "timeout_s": 30.0,
        "memory_bytes": 1024**3,
        "max_output_bytes": 1_000_000,
    }
    fields.update(kw)
    return JobSpec(**fields)  # type: ignore[arg-type]


def test_limits_session_and_exact_environment(tmp_path: Path) -> None:
    code = """
import json, os, resource
r = {name: resource.getrlimit(getattr(resource, name))[0] for name in ("RLIMIT_AS", "RLIMIT_FSIZE", "RLIMIT_CORE")}
r["own_session"] = os.getsid(0) == os.getpid()
r["env"] = sorted(os.environ)
r["omp"] = os.environ.get("OMP_NUM_THREADS")
json.dump(r, open(os.environ["FEDGE_OUTPUT_DIR"] + "/r.json", "w"))
"""
    spec = spec_for(tmp_path, code, cpu_count=2.5)
    assert LocalJobRunner().run(spec, threading.Event()).state is JobState.SUCCEEDED
    r = json.loads((spec.workdir / "output" / "r.json").read_text())
    assert r["RLIMIT_AS"] == 1024**3
    assert r["RLIMIT_FSIZE"] == 1_000_000
    assert r["RLIMIT_CORE"] == 0
    assert r["own_session"] is True
    assert r["omp"] == "3"
    allowed = {
        "PATH",
        "HOME",
        "LANG",
        "TMPDIR",
        "FEDGE_OUTPUT_DIR",
        "OMP_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "MKL_NUM_THREADS",
        "LC_CTYPE",
    }  # LC_CTYPE: set by the interpreter itself (PEP 538)
    assert set(r["env"]) <= allowed and {"PATH", "HOME", "LANG", "FEDGE_OUTPUT_DIR"} <= set(r["env"])


def test_no_memory_limit_leaves_address_space_alone(tmp_path: Path) -> None:
    code = "import os, resource; open(os.environ['FEDGE_OUTPUT_DIR'] + '/as', 'w').write(str(resource.getrlimit(resource.RLIMIT_AS)[0]))"
    spec = spec_for(tmp_path, code, memory_bytes=None)
    assert LocalJobRunner().run(spec, threading.Event()).state is JobState.SUCCEEDED
    assert int((spec.workdir / "output" / "as").read_text()) == resource.getrlimit(resource.RLIMIT_AS)[0]


def test_non_python_writer_killed_by_sigxfsz_gets_the_limit_reason(tmp_path: Path) -> None:
    spec = spec_for(tmp_path, "", command=["/bin/sh", "-c", "head -c 3000000 /dev/zero > output/big.bin"])
    outcome = LocalJobRunner().run(spec, threading.Event())
    assert outcome.state is JobState.FAILED
    assert outcome.reason is not None and outcome.reason.startswith("output exceeds limit of 1000000 bytes")


def test_empty_command_and_missing_executable_fail_with_a_reason(tmp_path: Path) -> None:
    outcome = LocalJobRunner().run(spec_for(tmp_path, "", command=[]), threading.Event())
    assert outcome.state is JobState.FAILED and outcome.reason and "no command" in outcome.reason
    outcome = LocalJobRunner().run(spec_for(tmp_path, "", command=["no-such-program-xyz"]), threading.Event())
    assert (
        outcome.state is JobState.FAILED
        and outcome.reason
        and "cannot start 'no-such-program-xyz'" in outcome.reason
    )


def test_capped_log_counts_this_run_and_keeps_the_tail(tmp_path: Path) -> None:
    path = tmp_path / "job.log"
    path.write_bytes(b"x" * 1000)  # earlier content does not count against this run's cap
    log = CappedLog(path, limit=10)
    log.write(b"12345")
    log.write(b"67890abc\nlast words\n")
    log.write(b"more")
    log.note("a runner note")
    assert log.last_line() == "more"  # the tail is kept past the cap
    log.close()
    data = path.read_bytes()
    assert data == b"x" * 1000 + b"1234567890" + TRUNCATED_MARKER + b"[fedge] a runner note\n"
