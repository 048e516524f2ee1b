"""ContainerJobRunner against a real Docker API: podman's ``podman system service`` started by
scripts/setup-podman.sh on a socket of its own in a temporary directory (session fixture, stopped and removed
at the end). Images are built locally from the host's files; nothing is pulled from a registry.

Runs the whole runner conformance suite in containers, then container-only checks (isolation, image digest,
never pulling, cleanup, examples/digits_sklearn in the self-contained training image).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

from controller.training.base import JobRunner, JobSpec, JobState, RunnerUnavailable
from controller.training.container import ContainerJobRunner
from controller.training.local import LocalJobRunner
from examples.make_digits_npz import load_digits_arrays, write_digits_npz
from tests.conformance.test_runner_conformance import GRACE_S, RunnerConformance

REPO = Path(__file__).resolve().parents[3]
SCRIPT = REPO / "scripts" / "setup-podman.sh"
BASE_IMAGE = "localhost/fedge-python:3.11"
TRAIN_IMAGE = "localhost/fedge-train:3.11"
EXAMPLES = REPO / "examples"


@dataclass
class Podman:
    dir: Path
    base_url: str
    ulimits: dict[str, int]

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.dir / "podman"), *args], capture_output=True, text=True, timeout=600)

    def setup(self, *args: str) -> None:
        r = subprocess.run(
            ["bash", str(SCRIPT), "--dir", str(self.dir), *args], capture_output=True, text=True, timeout=1800
        )
        if r.returncode != 0:
            pytest.fail(
                f"scripts/setup-podman.sh {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
            )


@pytest.fixture(scope="session")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    """podman's Docker-compatible API on DIR/podman.sock with the base image built (installs podman with
    apt-get when it is missing)."""
    d = tmp_path_factory.mktemp("podman")
    p = Podman(d, f"unix://{d}/podman.sock", {})
    p.setup()
    env = (d / "env").read_text()
    line = next(x for x in env.splitlines() if x.startswith("export FEDGE_CONTAINER_ULIMITS="))
    for item in line.split("=", 1)[1].strip('"').split(","):
        name, value = item.split("=")
        p.ulimits[name] = int(value)
    try:
        yield p
    finally:
        p.cli("rm", "--all", "--force")
        subprocess.run(["bash", str(SCRIPT), "--dir", str(d), "--stop"], capture_output=True, timeout=60)
        p.cli("system", "reset", "--force")  # drops images and storage without the service
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def train_image(podman: Podman) -> str:
    """localhost/fedge-train:3.11: the base image plus numpy, scikit-learn, skops copied from this venv."""
    podman.setup("--no-install", "--ml", "--venv", sys.prefix)
    return TRAIN_IMAGE


def make_runner(podman: Podman, **kw: object) -> ContainerJobRunner:
    opts: dict[str, object] = {"image": BASE_IMAGE, "ulimits": podman.ulimits, "kill_grace_s": GRACE_S}
    opts.update(kw)
    return ContainerJobRunner(podman.base_url, **opts)  # type: ignore[arg-type]


class TestContainerRunnerConformance(RunnerConformance):
    python = "python3"

    def job_dir_seen(self, workdir: Path) -> str:
        return "/job"

    @pytest.fixture
    def runner(self, podman: Podman) -> JobRunner:
        return make_runner(podman)


# -------------------------------------------------------------------------------------------- container only
def _spec(tmp_path: Path, program: str, **kw: object) -> JobSpec:
    return TestContainerRunnerConformance().make_spec(tmp_path, program, **kw)


def test_health_and_image_digest(podman: Podman) -> None:
    runner = make_runner(podman)
    runner.health()
    digest = runner.image_digest(BASE_IMAGE)
    inspect = json.loads(podman.cli("image", "inspect", BASE_IMAGE).stdout)[0]
    assert digest == f"sha256:{inspect['Id']}"
    assert len(digest) == len("sha256:") + 64
    with pytest.raises(LookupError, match="not present locally"):
        runner.image_digest("localhost/fedge-no-such-image:0")


def test_unreachable_engine_is_runner_unavailable(tmp_path: Path) -> None:
    runner = ContainerJobRunner(f"unix://{tmp_path}/nothing.sock")
    with pytest.raises(RunnerUnavailable):
        runner.health()


def test_missing_image_fails_without_pulling(podman: Podman, tmp_path: Path) -> None:
    runner = make_runner(podman)
    spec = _spec(tmp_path, "print('never runs')", image="docker.io/library/python:3.11-slim")
    outcome = runner.run(spec, threading.Event())
    assert outcome.state is JobState.FAILED
    assert outcome.reason == (
        "image docker.io/library/python:3.11-slim not present locally; build or import it"
    )
    assert podman.cli("image", "exists", "docker.io/library/python:3.11-slim").returncode == 1


def test_no_image_at_all_fails(podman: Podman, tmp_path: Path) -> None:
    runner = make_runner(podman, image=None)
    outcome = runner.run(_spec(tmp_path, "print(1)"), threading.Event())
    assert outcome.state is JobState.FAILED and outcome.reason == "no container image given for the job"


def test_isolation_inside_the_container(podman: Podman, tmp_path: Path) -> None:
    program = """
        import json, os, socket
        facts = {"uid": os.getuid(), "gid": os.getgid()}
        facts["ifaces"] = sorted(name for _, name in socket.if_nameindex())
        try:
            socket.create_connection(("10.0.0.1", 80), timeout=2)
            facts["net"] = "connected"
        except OSError as exc:
            facts["net"] = type(exc).__name__
        for path in ("/usr/evil", "/etc/evil"):
            try:
                open(path, "w")
                facts[path] = "written"
            except OSError:
                facts[path] = "refused"
        open("/tmp/scratch", "w").write("ok")
        status = dict(line.split(":\\t", 1) for line in open("/proc/self/status").read().splitlines()
                      if ":\\t" in line)
        facts["CapEff"] = status["CapEff"].strip()
        facts["NoNewPrivs"] = status["NoNewPrivs"].strip()
        import resource
        facts["fsize"] = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        facts["core"] = resource.getrlimit(resource.RLIMIT_CORE)[0]
        json.dump(facts, open(os.path.join(os.environ["FEDGE_OUTPUT_DIR"], "facts.json"), "w"))
    """
    spec = _spec(tmp_path, program, max_output_bytes=5_000_000)
    runner = make_runner(podman)
    outcome = runner.run(spec, threading.Event())
    assert outcome.state is JobState.SUCCEEDED, (outcome, (spec.workdir / "job.log").read_text())
    facts = json.loads((spec.workdir / "output" / "facts.json").read_text())
    assert facts["uid"] == 1000 and facts["gid"] == 1000  # not root
    assert facts["ifaces"] == ["lo"]  # network_mode=none
    assert facts["net"] in ("OSError", "TimeoutError", "ConnectionRefusedError")
    assert facts["/usr/evil"] == "refused" and facts["/etc/evil"] == "refused"  # read-only root fs
    assert facts["CapEff"] == "0000000000000000"
    assert facts["NoNewPrivs"] == "1"
    assert facts["fsize"] == 5_000_000 and facts["core"] == 0
    # the job dir is the controller's again after the run (the program's files included)
    st = (spec.workdir / "output" / "facts.json").stat()
    assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())


def test_containers_are_removed_after_each_run(podman: Podman, tmp_path: Path) -> None:
    runner = make_runner(podman)
    for program in ("print('ok')", "raise SystemExit(2)"):
        runner.run(_spec(tmp_path, program), threading.Event())
    left = podman.cli("ps", "--all", "--filter", "label=fedge.runner=container", "--format", "{{.Names}}")
    assert left.returncode == 0 and left.stdout.strip() == ""


def test_cpu_limit_and_read_only_mounts_are_applied(podman: Podman, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "helper_mod.py").write_text("VALUE = 42\n")
    program = """
        import json, os, helper_mod
        try:
            open("/opt/shared/new.py", "w")
            ro = False
        except OSError:
            ro = True
        json.dump({"value": helper_mod.VALUE, "ro": ro, "omp": os.environ.get("OMP_NUM_THREADS")},
                  open(os.path.join(os.environ["FEDGE_OUTPUT_DIR"], "r.json"), "w"))
    """
    spec = _spec(tmp_path, program, cpu_count=0.5)
    spec.env["PYTHONPATH"] = "{job_dir}/code:/opt/shared"
    runner = make_runner(podman, read_only_mounts={str(shared): "/opt/shared"})
    opts = runner.create_options(spec, spec.workdir)
    assert opts["nano_cpus"] == 500_000_000 and opts["network_mode"] == "none"
    assert opts["mem_limit"] == opts["memswap_limit"] == 1024**3
    outcome = runner.run(spec, threading.Event())
    assert outcome.state is JobState.SUCCEEDED, outcome
    r = json.loads((spec.workdir / "output" / "r.json").read_text())
    assert r == {"value": 42, "ro": True, "omp": "1"}


@pytest.mark.slow
def test_real_training_program_in_the_training_image(
    podman: Podman, train_image: str, tmp_path: Path
) -> None:
    """examples/digits_sklearn/train.py (TRAINING_CONTRACT, scikit-learn + skops) in the self-contained
    training image: no host mounts, no network."""
    spec = TestContainerRunnerConformance().make_spec(
        tmp_path, "", command=["python3", "{job_dir}/code/train.py"]
    )
    shutil.copy(EXAMPLES / "digits_sklearn" / "train.py", spec.workdir / "code" / "train.py")
    write_digits_npz(spec.workdir / "input" / "dataset.npz", limit=600)
    spec.env.update(
        FEDGE_DATASET_PATH="{job_dir}/input/dataset.npz",
        FEDGE_HYPERPARAMETERS=json.dumps({"C": 1.0, "max_iter": 200}),
        PYTHONPATH="{job_dir}/code",
    )
    runner = make_runner(podman, image=train_image)
    outcome = runner.run(spec, threading.Event())
    log = (spec.workdir / "job.log").read_text()
    assert outcome.state is JobState.SUCCEEDED, (outcome, log)
    assert "training LogisticRegression on 480 samples" in log
    out = spec.workdir / "output"
    meta = json.loads((out / "model.json").read_text())
    assert meta["framework"] == "sklearn" and meta["input_shape"] == [None, 64]
    (metrics,) = [json.loads(s) for s in (spec.workdir / "metrics.jsonl").read_text().splitlines()]
    assert metrics["progress"] == 1.0 and metrics["holdout_accuracy"] > 0.85
    # the artifact loads back on the controller's side, as data (skops), with the same accuracy
    import skops.io

    model = skops.io.load(out / "model.skops", trusted=skops.io.get_untrusted_types(file=out / "model.skops"))
    x, y = load_digits_arrays(600)
    assert model.score(x.reshape(len(x), -1), y) > 0.9
    assert runner.image_digest(train_image).startswith("sha256:")


def test_same_program_same_result_locally_and_in_a_container(podman: Podman, tmp_path: Path) -> None:
    """The env/command contract is runner-independent: only the job dir as seen by the program differs."""
    program = """
        import json, os
        keys = ("FEDGE_JOB_DIR", "FEDGE_OUTPUT_DIR", "FEDGE_METRICS_FILE")
        json.dump({k: os.environ[k].replace(os.environ["FEDGE_JOB_DIR"], "<jd>") for k in keys},
                  open(os.path.join(os.environ["FEDGE_OUTPUT_DIR"], "env.json"), "w"))
    """
    results = []
    for runner, python in ((LocalJobRunner(), "python3"), (make_runner(podman), "python3")):
        spec = RunnerConformance().make_spec(tmp_path, program, command=[python, "{job_dir}/code/prog.py"])
        assert runner.run(spec, threading.Event()).state is JobState.SUCCEEDED
        results.append(json.loads((spec.workdir / "output" / "env.json").read_text()))
    assert (
        results[0]
        == results[1]
        == {
            "FEDGE_JOB_DIR": "<jd>",
            "FEDGE_OUTPUT_DIR": "<jd>/output",
            "FEDGE_METRICS_FILE": "<jd>/metrics.jsonl",
        }
    )


def test_docker_sdk_talks_to_podman(podman: Podman) -> None:
    client = docker.DockerClient(base_url=podman.base_url, version="auto")
    assert client.ping()
    assert BASE_IMAGE in {tag for img in client.images.list() for tag in img.tags}
