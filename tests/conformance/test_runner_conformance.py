"""One JobRunner conformance suite, run against every runner that can run here.

``LocalJobRunner`` and ``KubernetesJobRunner`` below -- the latter against the in-memory Kubernetes API of
tests/conformance/fake_kubernetes.py (whose kubelet runs the pod as a local process group) by default, and
against a real cluster when one is given (marker ``k8s``, see tests/conformance/conftest.py);
``ContainerJobRunner`` (against podman's Docker API) subclasses this suite in
tests/controller/training/test_container_runner.py. The programs are plain Python (stdlib only) written into the job's
``code/`` directory and started as ``[python, "{job_dir}/code/prog.py"]``.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.training.base import JobOutcome, JobRunner, JobSpec, JobState
from controller.training.kubernetes import HostPathJobDir, KubernetesJobRunner, PvcJobDir, job_name
from controller.training.local import LocalJobRunner
from tests.conformance.fake_kubernetes import FakeKubernetes

GRACE_S = 1.0  # kill grace the suite's runners are built with


class RunnerConformance:
    """Subclasses provide the ``runner`` fixture, ``python`` (the interpreter as the program sees it) and
    ``job_dir_seen`` (the job directory as the program sees it)."""

    python: str = sys.executable
    stops_oversized_writes: bool = True
    """False for a runner whose program writes to a volume that no per-file limit applies to (Kubernetes):
    the output limit is then only enforced on the run's outcome."""

    def job_dir_seen(self, workdir: Path) -> str:
        return str(workdir.resolve())

    def log_opening(self, spec: JobSpec) -> bytes:
        """What the runner itself writes into ``job.log`` before the program's output (none by default)."""
        return b""

    # ---------------------------------------------------------------------------------------- helpers
    def make_spec(self, tmp_path: Path, program: str, **kw: object) -> JobSpec:
        workdir = tmp_path / f"job-{uuid.uuid4().hex[:8]}"
        for sub in ("code", "input", "output"):
            (workdir / sub).mkdir(parents=True)
        (workdir / "code" / "prog.py").write_text(textwrap.dedent(program))
        (workdir / "input" / "hyperparameters.json").write_text('{"epochs": 2}')
        env = {
            "FEDGE_JOB_DIR": "{job_dir}",
            "FEDGE_OUTPUT_DIR": "{job_dir}/output",
            "FEDGE_METRICS_FILE": "{job_dir}/metrics.jsonl",
            "FEDGE_HYPERPARAMETERS": '{"epochs": 2}',
            "PLAIN": "no placeholder here",
        }
        fields: dict[str, object] = {
            "job_id": workdir.name,
            "workdir": workdir,
            "command": [self.python, "{job_dir}/code/prog.py"],
            "env": env,
            "timeout_s": 60.0,
            "memory_bytes": 1024**3,
            "max_output_bytes": 1_000_000,
            "max_log_bytes": 1_000_000,
        }
        fields.update(kw)
        return JobSpec(**fields)  # type: ignore[arg-type]

    @staticmethod
    def log_of(spec: JobSpec) -> str:
        return (spec.workdir / "job.log").read_text(errors="replace")

    @staticmethod
    def wait_for(path: Path, within: float = 30.0) -> None:
        end = time.monotonic() + within
        while not path.exists():
            assert time.monotonic() < end, f"{path} did not appear within {within} s"
            time.sleep(0.05)

    # ---------------------------------------------------------------------------------------- success
    def test_success_writes_output_sees_env_and_logs(
        self, runner: JobRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("FEDGE_CONTROLLER_SECRET", "must-not-leak")
        spec = self.make_spec(
            tmp_path,
            """
            import json, os, sys
            print("hello on stdout", flush=True)
            print("hello on stderr", file=sys.stderr, flush=True)
            out = os.environ["FEDGE_OUTPUT_DIR"]
            seen = {k: os.environ.get(k) for k in ("FEDGE_JOB_DIR", "FEDGE_OUTPUT_DIR", "FEDGE_METRICS_FILE",
                                                    "FEDGE_HYPERPARAMETERS", "PLAIN", "HOME",
                                                    "FEDGE_CONTROLLER_SECRET")}
            seen["cwd"] = os.getcwd()
            seen["argv0"] = sys.argv[0]
            with open(os.path.join(out, "model.json"), "w") as fh:
                json.dump(seen, fh)
            with open(os.environ["FEDGE_METRICS_FILE"], "a") as fh:
                fh.write(json.dumps({"step": 1, "progress": 1.0, "loss": 0.1}) + "\\n")
            """,
        )
        outcome = runner.run(spec, threading.Event())
        assert outcome == JobOutcome(JobState.SUCCEEDED, exit_code=0), outcome
        seen = json.loads((spec.workdir / "output" / "model.json").read_text())
        jd = self.job_dir_seen(spec.workdir)
        assert seen["FEDGE_JOB_DIR"] == jd
        assert seen["FEDGE_OUTPUT_DIR"] == f"{jd}/output"
        assert seen["FEDGE_METRICS_FILE"] == f"{jd}/metrics.jsonl"
        assert json.loads(seen["FEDGE_HYPERPARAMETERS"]) == {"epochs": 2}
        assert seen["PLAIN"] == "no placeholder here"
        assert seen["HOME"] == jd
        assert seen["cwd"] == jd
        assert seen["argv0"] == f"{jd}/code/prog.py"  # {job_dir} substituted in the command too
        assert seen["FEDGE_CONTROLLER_SECRET"] is None  # nothing inherited from the controller
        metrics = [json.loads(line) for line in (spec.workdir / "metrics.jsonl").read_text().splitlines()]
        assert metrics == [{"step": 1, "progress": 1.0, "loss": 0.1}]
        log = self.log_of(spec)
        assert "hello on stdout" in log and "hello on stderr" in log

    def test_log_is_appended_not_replaced(self, runner: JobRunner, tmp_path: Path) -> None:
        spec = self.make_spec(tmp_path, "print('from the program')")
        (spec.workdir / "job.log").write_text("[fedge] written before the run\n")
        assert runner.run(spec, threading.Event()).state is JobState.SUCCEEDED
        log = self.log_of(spec)
        assert log.startswith("[fedge] written before the run\n")
        assert "from the program" in log

    # ---------------------------------------------------------------------------------------- failures
    def test_crash_is_failed_with_exit_code_and_last_line(self, runner: JobRunner, tmp_path: Path) -> None:
        spec = self.make_spec(
            tmp_path,
            """
            import sys
            print("loading data", flush=True)
            print("ValueError: learning rate must be positive", file=sys.stderr, flush=True)
            sys.exit(3)
            """,
        )
        outcome = runner.run(spec, threading.Event())
        assert outcome.state is JobState.FAILED
        assert outcome.exit_code == 3
        assert outcome.reason is not None
        assert "exited with code 3" in outcome.reason
        assert "learning rate must be positive" in outcome.reason
        assert "loading data" in self.log_of(spec)

    def test_uncaught_exception_reason_names_it(self, runner: JobRunner, tmp_path: Path) -> None:
        spec = self.make_spec(tmp_path, "raise RuntimeError('the dataset has no rows')")
        outcome = runner.run(spec, threading.Event())
        assert outcome.state is JobState.FAILED and outcome.exit_code == 1
        assert outcome.reason is not None and "RuntimeError: the dataset has no rows" in outcome.reason

    def test_killed_by_a_signal_is_failed(self, runner: JobRunner, tmp_path: Path) -> None:
        spec = self.make_spec(
            tmp_path,
            "import os, signal; print('going down', flush=True); os.kill(os.getpid(), signal.SIGKILL)",
        )
        outcome = runner.run(spec, threading.Event())
        assert outcome.state is JobState.FAILED
        assert outcome.exit_code in (-9, 137)  # a process's -SIGKILL; a container's 128 + 9
        assert outcome.reason is not None and "going down" in outcome.reason

    def test_missing_program_is_failed_not_raised(self, runner: JobRunner, tmp_path: Path) -> None:
        spec = self.make_spec(tmp_path, "", command=["/no/such/interpreter", "x"])
        outcome = runner.run(spec, threading.Event())
        assert outcome.state is JobState.FAILED
        assert outcome.reason

    def test_timeout_kills_the_whole_process_tree(self, runner: JobRunner, tmp_path: Path) -> None:
        spec = self.make_spec(
            tmp_path,
            """
            import os, signal, subprocess, sys, time
            beat = os.path.join(os.environ["FEDGE_JOB_DIR"], "heartbeat")
            # a grandchild that keeps appending to a file, and a parent that ignores SIGTERM
            subprocess.Popen([sys.executable, "-c", "import sys, time\\nwhile True:\\n"
                              "    open(sys.argv[1], 'a').write('.')\\n    time.sleep(0.05)", beat])
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            while not os.path.exists(beat):
                time.sleep(0.02)
            open(os.path.join(os.environ["FEDGE_JOB_DIR"], "started"), "w").close()
            print("training forever", flush=True)
            while True:
                time.sleep(0.1)
            """,
            timeout_s=3,
        )
        t0 = time.monotonic()
        outcome = runner.run(spec, threading.Event())
        took = time.monotonic() - t0
        assert outcome.state is JobState.FAILED
        assert outcome.reason is not None and outcome.reason.startswith("timed out after 3 s")
        assert (spec.workdir / "started").exists(), self.log_of(spec)
        assert took < 3 + GRACE_S + 5, took
        beat = spec.workdir / "heartbeat"
        size = beat.stat().st_size
        time.sleep(0.6)
        assert beat.stat().st_size == size, "a process of the job outlived it"
        assert "training forever" in self.log_of(spec)

    def test_cancel_stops_the_job(self, runner: JobRunner, tmp_path: Path) -> None:
        spec = self.make_spec(
            tmp_path,
            """
            import os, time
            open(os.path.join(os.environ["FEDGE_JOB_DIR"], "started"), "w").close()
            while True:
                time.sleep(0.1)
            """,
        )
        cancel = threading.Event()
        result: list[JobOutcome] = []
        worker = threading.Thread(target=lambda: result.append(runner.run(spec, cancel)))
        worker.start()
        try:
            self.wait_for(spec.workdir / "started")
        finally:
            t0 = time.monotonic()
            cancel.set()
            worker.join(timeout=30)
        assert not worker.is_alive()
        assert time.monotonic() - t0 < GRACE_S + 5
        assert result[0].state is JobState.CANCELLED

    def test_cancel_before_start_ends_quickly(self, runner: JobRunner, tmp_path: Path) -> None:
        spec = self.make_spec(tmp_path, "import time; time.sleep(30)")
        cancel = threading.Event()
        cancel.set()
        t0 = time.monotonic()
        assert runner.run(spec, cancel).state is JobState.CANCELLED
        assert time.monotonic() - t0 < GRACE_S + 5

    # ---------------------------------------------------------------------------------------- limits
    def test_huge_output_file_fails_with_limit_reason(self, runner: JobRunner, tmp_path: Path) -> None:
        spec = self.make_spec(
            tmp_path,
            """
            import os
            with open(os.path.join(os.environ["FEDGE_OUTPUT_DIR"], "model.pt"), "wb") as fh:
                for _ in range(30):
                    fh.write(b"\\0" * 100_000)
            """,
            max_output_bytes=1_000_000,
        )
        outcome = runner.run(spec, threading.Event())
        assert outcome.state is JobState.FAILED
        assert outcome.reason is not None and "output exceeds limit of 1000000 bytes" in outcome.reason
        if self.stops_oversized_writes:
            assert (spec.workdir / "output" / "model.pt").stat().st_size <= 1_000_000  # the write was stopped

    def test_output_total_over_limit_fails(self, runner: JobRunner, tmp_path: Path) -> None:
        spec = self.make_spec(
            tmp_path,
            """
            import os
            for name in ("a.bin", "b.bin"):
                with open(os.path.join(os.environ["FEDGE_OUTPUT_DIR"], name), "wb") as fh:
                    fh.write(b"\\1" * 600_000)
            """,
            max_output_bytes=1_000_000,
        )
        outcome = runner.run(spec, threading.Event())
        assert outcome.state is JobState.FAILED
        assert outcome.exit_code == 0
        assert outcome.reason is not None and "output exceeds limit of 1000000 bytes" in outcome.reason

    def test_log_is_capped_and_the_program_is_not_blocked(self, runner: JobRunner, tmp_path: Path) -> None:
        spec = self.make_spec(
            tmp_path,
            """
            import os, sys
            print("FIRST LINE", flush=True)
            for i in range(6000):
                print(f"line {i:05d} " + "x" * 80)
            sys.stdout.flush()
            open(os.path.join(os.environ["FEDGE_OUTPUT_DIR"], "done"), "w").close()
            """,
            max_log_bytes=20_000,
        )
        outcome = runner.run(spec, threading.Event())
        assert outcome.state is JobState.SUCCEEDED, outcome
        assert (spec.workdir / "output" / "done").exists()
        raw = (spec.workdir / "job.log").read_bytes()
        opening = self.log_opening(spec)
        assert raw.startswith(opening + b"FIRST LINE\n")
        assert b"[log truncated]" in raw
        assert b"line 05999" not in raw
        assert len(raw) <= len(opening) + 20_000 + 200, len(raw)

    def test_memory_limit_fails_the_job(self, runner: JobRunner, tmp_path: Path) -> None:
        spec = self.make_spec(
            tmp_path,
            """
            blocks = []
            for _ in range(40):                     # 40 x 32 MiB = 1.25 GiB, touched
                blocks.append(bytearray(32 * 1024 * 1024))
            print("allocated everything", flush=True)
            """,
            memory_bytes=256 * 1024**2,
        )
        outcome = runner.run(spec, threading.Event())
        assert outcome.state is JobState.FAILED, outcome
        assert "allocated everything" not in self.log_of(spec)


class TestLocalRunner(RunnerConformance):
    @pytest.fixture
    def runner(self) -> JobRunner:
        return LocalJobRunner(kill_grace_s=GRACE_S)


K8S_IMAGE = "fedge.test/host-python:1"  # the fake kubelet's "image" is this machine


class TestKubernetesRunner(RunnerConformance):
    """KubernetesJobRunner end to end against FakeKubernetes: the runner's manifests (validated by the fake
    API server), Secret, log follower, condition watch and deletion, with the program really running. The
    job directory reaches the pod as a hostPath or as a PersistentVolumeClaim's sub-path."""

    stops_oversized_writes = False

    def log_opening(self, spec: JobSpec) -> bytes:
        return f"[fedge] submitted Job fedge-jobs/{job_name(spec.job_id)} (image {K8S_IMAGE})\n".encode()

    @pytest.fixture
    def cluster(self, tmp_path: Path) -> Iterator[FakeKubernetes]:
        cluster = FakeKubernetes(claims={"fedge-jobs": tmp_path}, kill_grace_s=GRACE_S)
        yield cluster
        cluster.close()

    @pytest.fixture(params=["hostpath", "pvc"])
    def runner(
        self, request: pytest.FixtureRequest, cluster: FakeKubernetes, tmp_path: Path
    ) -> Iterator[JobRunner]:
        job_dir = HostPathJobDir() if request.param == "hostpath" else PvcJobDir("fedge-jobs", tmp_path)
        runner = KubernetesJobRunner(
            namespace="fedge-jobs",
            image=K8S_IMAGE,
            job_dir=job_dir,
            apis=(cluster, cluster),
            poll_s=0.05,
            delete_grace_s=5.0,  # the cluster's activeDeadlineSeconds ends a job before the runner would
            stuck_after_s=2.0,
        )
        runner.health()
        yield runner
        assert cluster.leftovers() == []  # every run deletes its Job and Secret

    def test_secret_env_reaches_the_program_through_a_secret(
        self, runner: JobRunner, cluster: FakeKubernetes, tmp_path: Path
    ) -> None:
        spec = self.make_spec(
            tmp_path,
            """
            import os
            with open(os.path.join(os.environ["FEDGE_OUTPUT_DIR"], "token"), "w") as fh:
                fh.write(os.environ["FEDGE_JOB_TOKEN"])
            """,
            env={"FEDGE_OUTPUT_DIR": "{job_dir}/output", "FEDGE_JOB_TOKEN": "fedge_job-secret-value"},
        )
        assert runner.run(spec, threading.Event()) == JobOutcome(JobState.SUCCEEDED, exit_code=0)
        assert (spec.workdir / "output" / "token").read_text() == "fedge_job-secret-value"
        assert cluster.calls.count("create_namespaced_secret") == 1
        assert cluster.calls.count("delete_namespaced_secret") == 1


@pytest.mark.k8s
class TestKubernetesRunnerOnACluster(RunnerConformance):
    """The same suite on a real cluster (deselected without one: tests/conformance/conftest.py). Set
    ``FEDGE_TEST_KUBECONFIG`` (else ``~/.kube/config``) and, as needed, ``FEDGE_TEST_K8S_NAMESPACE``
    (fedge-jobs), ``FEDGE_TEST_K8S_IMAGE`` (localhost/fedge-python:3.11, loaded onto the nodes),
    ``FEDGE_TEST_K8S_PULL_POLICY`` (Never), ``FEDGE_TEST_K8S_JOB_ROOT`` (/var/lib/fedge/jobs: a hostPath the
    node sees at the same path, as in packaging/k8s/README.md) and ``FEDGE_TEST_K8S_NODE``."""

    python = "python3"
    stops_oversized_writes = False
    namespace = os.environ.get("FEDGE_TEST_K8S_NAMESPACE", "fedge-jobs")
    image = os.environ.get("FEDGE_TEST_K8S_IMAGE", "localhost/fedge-python:3.11")
    job_root = Path(os.environ.get("FEDGE_TEST_K8S_JOB_ROOT", "/var/lib/fedge/jobs"))

    def job_dir_seen(self, workdir: Path) -> str:
        return "/job"

    def log_opening(self, spec: JobSpec) -> bytes:
        return (
            f"[fedge] submitted Job {self.namespace}/{job_name(spec.job_id)} (image {self.image})\n".encode()
        )

    def make_spec(self, tmp_path: Path, program: str, **kw: object) -> JobSpec:
        """The job directory under the node-visible root, writable by the pods' user."""
        spec = super().make_spec(self.job_root / f"t-{uuid.uuid4().hex[:8]}", program, **kw)
        for path in [spec.workdir, *spec.workdir.rglob("*")]:
            path.chmod(0o777 if path.is_dir() else 0o666)
        return spec

    @pytest.fixture
    def runner(self) -> JobRunner:
        runner = KubernetesJobRunner(
            namespace=self.namespace,
            image=self.image,
            image_pull_policy=os.environ.get("FEDGE_TEST_K8S_PULL_POLICY", "Never"),
            job_dir=HostPathJobDir(os.environ.get("FEDGE_TEST_K8S_NODE")),
            kubeconfig=os.environ.get("FEDGE_TEST_KUBECONFIG"),
            poll_s=0.2,
            delete_grace_s=5.0,
            stuck_after_s=60.0,
        )
        runner.health()  # no cluster: an error, not a skip
        return runner
