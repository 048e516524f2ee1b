"""LocalJobRunner: the training program as a subprocess of the controller, in its own session.

Isolation is what a plain process can get without privileges: a clean environment, its own process group
(killed as a whole), resource limits (``RLIMIT_AS`` from ``memory_bytes``, ``RLIMIT_FSIZE`` from
``max_output_bytes``, no core files). It is *not* a sandbox: the program runs as the controller's user
and can read what that user can read. Use the container or Kubernetes runner for untrusted code.

The helpers here (:class:`CappedLog`, :func:`tree_size`, :func:`output_verdict`, :func:`substitute`) are
shared by the other runners so that all of them word their outcomes the same way.
"""

from __future__ import annotations

import contextlib
import math
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import BinaryIO

from controller.training.base import JobOutcome, JobRunner, JobSpec, JobState

POLL_S = 0.1
TRUNCATED_MARKER = b"\n[log truncated]\n"
_TAIL_BYTES = 8192


def substitute(value: str, job_dir: str) -> str:
    """``{job_dir}`` in a command argument or env value -> the job directory as the program sees it."""
    return value.replace("{job_dir}", job_dir)


def job_env(spec: JobSpec, job_dir: str) -> dict[str, str]:
    """``spec.env`` with ``{job_dir}`` substituted, plus thread-count hints when ``cpu_count`` is set."""
    env = {k: substitute(v, job_dir) for k, v in spec.env.items()}
    if spec.cpu_count is not None:
        threads = str(max(1, math.ceil(spec.cpu_count)))
        for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(name, threads)
    return env


def prepare_workdir(spec: JobSpec) -> Path:
    """The absolute job directory, with ``output/`` present."""
    workdir = spec.workdir.resolve()
    (workdir / "output").mkdir(parents=True, exist_ok=True)
    return workdir


class CappedLog:
    """Appends a job's output to ``job.log`` up to ``limit`` bytes (this run's share), then writes one
    ``[log truncated]`` marker and drops the rest -- the caller keeps reading its source so the program
    never blocks on a full pipe. Remembers the last bytes seen (even past the cap) for error reasons."""

    def __init__(self, path: Path, limit: int) -> None:
        self.path = path
        self.limit = max(0, limit)
        self.written = 0
        self.truncated = False
        self._tail = b""
        self._lock = threading.Lock()
        self._fh: BinaryIO = path.open("ab")

    def write(self, data: bytes) -> None:
        if not data:
            return
        with self._lock:
            self._tail = (self._tail + data)[-_TAIL_BYTES:]
            if self.truncated or self._fh.closed:
                return
            room = self.limit - self.written
            if len(data) > room:
                if room > 0:
                    self._fh.write(data[:room])
                    self.written += room
                self._fh.write(TRUNCATED_MARKER)
                self.truncated = True
            else:
                self._fh.write(data)
                self.written += len(data)
            self._fh.flush()

    def note(self, line: str) -> None:
        """A line from the runner itself (not counted against the cap)."""
        with self._lock:
            if not self._fh.closed:
                self._fh.write(f"[fedge] {line}\n".encode())
                self._fh.flush()

    def last_line(self, max_chars: int = 300) -> str | None:
        """The last non-empty line the program printed, for a failure reason."""
        with self._lock:
            tail = self._tail
        for raw in reversed(tail.splitlines()):
            line = raw.decode("utf-8", "replace").strip()
            if line:
                return line if len(line) <= max_chars else line[: max_chars - 3] + "..."
        return None

    def close(self) -> None:
        with self._lock:
            self._fh.close()


def pump(read: Callable[[], bytes], log: CappedLog) -> None:
    """Copy chunks from ``read`` (b"" = end) into ``log`` until the source ends or fails."""
    try:
        while chunk := read():
            log.write(chunk)
    except (OSError, ValueError):
        pass


def tree_size(root: Path) -> tuple[int, int]:
    """(total bytes of the regular files under ``root``, size of the largest one). Symlinks not followed."""
    total = largest = 0
    if not root.is_dir():
        return 0, 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            total += st.st_size
            largest = max(largest, st.st_size)
    return total, largest


def output_verdict(spec: JobSpec, workdir: Path, *, failed: bool) -> str | None:
    """The "output exceeds limit" reason when ``output/`` is over ``max_output_bytes``, or when the
    program failed after a file reached the per-file limit (RLIMIT_FSIZE / ulimit fsize stopped it)."""
    total, largest = tree_size(workdir / "output")
    limit = spec.max_output_bytes
    if total > limit or (failed and largest >= limit):
        return f"output exceeds limit of {limit} bytes (output/ holds {total} bytes)"
    return None


def exit_reason(code: int, log: CappedLog) -> str:
    """``exited with code N`` (or ``killed by SIGX``) plus the program's last log line."""
    if code < 0:
        try:
            what = f"killed by {signal.Signals(-code).name}"
        except ValueError:
            what = f"killed by signal {-code}"
    else:
        what = f"exited with code {code}"
    last = log.last_line()
    return f"{what}: {last}" if last else what


def format_seconds(s: float) -> str:
    return f"{s:g}"


class LocalJobRunner(JobRunner):
    """Runs ``spec.command`` as a child process (see the module docstring for what is and is not isolated).

    ``path`` is the child's ``PATH`` (default: the controller interpreter's directory, then the usual
    system directories); ``kill_grace_s`` is how long SIGTERM gets before SIGKILL."""

    name = "local"

    def __init__(self, *, path: str | None = None, kill_grace_s: float = 5.0, lang: str = "C.UTF-8") -> None:
        self.path = path or os.pathsep.join(
            [str(Path(sys.executable).parent), "/usr/local/bin", "/usr/bin", "/bin"]
        )
        self.kill_grace_s = kill_grace_s
        self.lang = lang

    def environment(self, spec: JobSpec, workdir: Path) -> dict[str, str]:
        """The child's whole environment: nothing is inherited from the controller."""
        env = {"PATH": self.path, "HOME": str(workdir), "LANG": self.lang, "TMPDIR": str(workdir / "tmp")}
        env.update(job_env(spec, str(workdir)))
        return env

    def run(self, spec: JobSpec, cancel: threading.Event) -> JobOutcome:
        workdir = prepare_workdir(spec)
        (workdir / "tmp").mkdir(exist_ok=True)
        if not spec.command:
            return JobOutcome(JobState.FAILED, reason="no command to run (the local runner needs an argv)")
        argv = [substitute(a, str(workdir)) for a in spec.command]
        log = CappedLog(workdir / "job.log", spec.max_log_bytes)
        try:
            try:
                proc = subprocess.Popen(
                    argv,
                    cwd=workdir,
                    env=self.environment(spec, workdir),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    close_fds=True,
                    preexec_fn=_limits(spec.memory_bytes, spec.max_output_bytes),
                )
            except OSError as exc:
                log.note(f"cannot start {argv[0]!r}: {exc}")
                return JobOutcome(JobState.FAILED, reason=f"cannot start {argv[0]!r}: {exc}")
            return self._supervise(spec, workdir, proc, log, cancel)
        finally:
            log.close()

    def _supervise(
        self,
        spec: JobSpec,
        workdir: Path,
        proc: subprocess.Popen[bytes],
        log: CappedLog,
        cancel: threading.Event,
    ) -> JobOutcome:
        assert proc.stdout is not None
        stdout = proc.stdout

        def drain() -> None:
            # the reader owns the pipe: closing it under a blocked read could hand the fd number to
            # another file while this thread still reads from it
            try:
                pump(lambda: os.read(stdout.fileno(), 65536), log)
            finally:
                stdout.close()

        reader = threading.Thread(target=drain, name=f"job-log-{spec.job_id}")
        reader.daemon = True
        reader.start()
        deadline = time.monotonic() + spec.timeout_s
        ended: JobState | None = None
        reason: str | None = None
        try:
            while proc.poll() is None:
                if cancel.is_set():
                    ended, reason = JobState.CANCELLED, "cancelled"
                    break
                if time.monotonic() >= deadline:
                    ended, reason = JobState.FAILED, f"timed out after {format_seconds(spec.timeout_s)} s"
                    break
                cancel.wait(POLL_S)
            if ended is not None:
                log.note(f"{reason}: stopping the process group")
                self._terminate(proc)
        finally:
            # stragglers of the group (a background child) never outlive the job
            _killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            reader.join(timeout=self.kill_grace_s)  # a process that escaped the group may hold the pipe
        if ended is not None:
            return JobOutcome(ended, exit_code=proc.returncode, reason=reason)
        code = proc.returncode
        over = output_verdict(spec, workdir, failed=code != 0)
        if over:
            log.note(over)
            return JobOutcome(JobState.FAILED, exit_code=code, reason=over)
        if code != 0:
            return JobOutcome(JobState.FAILED, exit_code=code, reason=exit_reason(code, log))
        return JobOutcome(JobState.SUCCEEDED, exit_code=0)

    def _terminate(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGTERM to the whole group, SIGKILL after the grace period."""
        _killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=self.kill_grace_s)
        _killpg(proc.pid, signal.SIGKILL)


def _killpg(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _limits(memory_bytes: int | None, max_output_bytes: int) -> Callable[[], None]:
    """The child-side hook (runs between fork and exec): only async-signal-safe-ish setrlimit calls."""
    limits: Mapping[int, int] = {
        resource.RLIMIT_CORE: 0,
        resource.RLIMIT_FSIZE: max_output_bytes,
        **({resource.RLIMIT_AS: memory_bytes} if memory_bytes else {}),
    }

    def apply() -> None:
        for which, value in limits.items():
            _soft, hard = resource.getrlimit(which)
            if hard != resource.RLIM_INFINITY:
                value = min(value, hard)
            resource.setrlimit(which, (value, value))

    return apply
