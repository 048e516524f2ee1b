"""The ``nvflare`` federation engine: an FL job of ``/v1/fl/jobs`` exported as an NVIDIA FLARE job (its
Job Recipe API, ``FedAvgRecipe``) and run on FLARE's own runtime, the FLARE simulator, on loopback.

What runs where (simulator mode, the only mode so far): the FLARE server and one FLARE client per
participant device run **on the controller host**, in a child process tree of the controller (never in
the API process). Each client is named after its device id and trains on that participant's partition
of the model's **registered dataset** (fetched from the registry, SHA-256 checked against the chain,
then split: a common held-out test split and one training shard per participant). The devices
themselves run nothing and get no ``fl-join`` command; their ids only name the clients. So this engine
runs a real FLARE federation with real FLARE aggregation, but it is a *simulation* of the devices, not a
deployment on them (docs/fl-engines.md).

A job goes:

1. :func:`unsupported` refuses at submit (422) every option the engine does not run (the matrix is
   ``SUPPORT``): only FedAvg without parameters, no local/central DP or other privacy options.
2. The manager enlists the participants (no node registration, :attr:`NvflareEngine.deploys_to_devices`
   is False) and stages the registered dataset; :meth:`NvflareEngine.run` writes a plan and starts
   ``python -m controller.federation.nvflare <plan.json>`` in its own session, which partitions the
   data, exports the FLARE job (:func:`export_job`: ``FedAvgRecipe`` + FLARE's final global
   evaluation, the client script :mod:`controller.federation.nvflare_client`) and runs
   ``SimulatorRunner`` on it.
3. While it runs, every line FLARE's ``MetricsArtifactWriter`` appends to
   ``server/simulate_job/metrics/round_metrics.jsonl`` becomes fedge round reports (:class:`RoundParser`):
   FLARE round ``k`` (0-based) is fedge round ``k + 1``'s ``train`` report (the clients' local fit) and
   fedge round ``k``'s ``evaluate`` report (each client scores the global model it received before
   training); the last round's evaluation is FLARE's final global evaluation
   (``cross_site_val/cross_val_results.json``).
4. The final global model FLARE saved (``app_server/FL_global_model.pt``, loaded with
   ``weights_only=True``) becomes ``spec.output_path`` (.npz): the manager publishes it like a Flower
   result (program, chain record ``nvflare:fedavg``, registry version).

Cancel, the job's wall-clock limit and a stall limit stop the child's whole process tree (FLARE starts its
client workers in sessions of their own; every descendant is tracked by pid and stopped).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controller.federation.base import (
    EngineError,
    EngineUnavailable,
    FederationEngine,
    FederationOutcome,
    FederationSpec,
    FleetEndpoint,
    ReportCallback,
)
from controller.training.base import JobState

if TYPE_CHECKING:
    from controller.schemas.fl import FlJobIn

__all__ = [
    "ENGINE",
    "EXTRA",
    "SUPPORT",
    "JobPlan",
    "NvflareEngine",
    "RoundParser",
    "check_job",
    "export_job",
    "missing_extra",
    "node_id",
    "partition_dataset",
    "unsupported",
]

log = logging.getLogger("fedge.federation.nvflare")

ENGINE = "nvflare"
EXTRA = "flare"
JOB_NAME = "fedge-fl-job"
FINAL_MODEL = "FL_global_model.pt"
SERVER_MODEL_KEY = "SRV_FL_global_model.pt"  # the final model's name in FLARE's evaluation results
POLL_SECONDS = 0.5
STOP_GRACE_SECONDS = 10.0

SUPPORT: dict[str, str] = {
    "model (registry, start version, built-in or module:function network)": "yes",
    "rounds, local_epochs, batch_size, lr, momentum, seed": "yes",
    "min_clients / min_fraction": "yes (every participant trains every round)",
    "round_timeout": "yes (the run fails when no round ends for 2 x round_timeout + 120 s)",
    "strategy fedavg (no params)": "yes (FLARE's FedAvg, weighted by training examples)",
    "strategy fedavgm, fedprox, fedtrimmedavg, fedmedian, krum, multikrum; strategy params": "no: 422",
    "privacy.dp (local DP-SGD), privacy.central_dp, any other privacy option": "no: 422",
    "any other job option with a non-default value (HE, SecAgg+, FedPATE, ...)": "no: 422",
}
"""What the engine runs (``docs/fl-engines.md`` has the full comparison with Flower)."""

# FlJobIn fields the engine runs; anything else given with a non-default value is refused
_RUNS = frozenset(
    {
        "engine",
        "model",
        "participants",
        "min_clients",
        "min_fraction",
        "rounds",
        "local_epochs",
        "batch_size",
        "lr",
        "momentum",
        "seed",
        "strategy",
        "privacy",
        "data",
        "round_timeout",
    }
)


def missing_extra() -> str | None:
    """Why the engine cannot run here (nvflare not installed), else None. Imports nothing."""
    if importlib.util.find_spec("nvflare") is None:
        return f"the nvflare engine needs NVIDIA FLARE: pip install 'fedge[{EXTRA}]'"
    return None


def unsupported(req: FlJobIn) -> tuple[str, str] | None:
    """``(field, reason)`` of the first option of ``req`` the nvflare engine does not run; None when it
    runs them all. Pure (no nvflare import): the job API calls it before queueing."""
    given = req.model_dump(exclude_defaults=True)
    for name in sorted(set(given) - _RUNS):
        return name, f"the nvflare engine does not support {name} (use engine 'flower')"
    strategy = req.strategy.name.strip().lower()
    if strategy != "fedavg":
        return "strategy.name", (
            f"the nvflare engine runs only the fedavg strategy, not {strategy!r} (use engine 'flower')"
        )
    if req.strategy.params:
        return "strategy.params", "the nvflare engine's fedavg takes no strategy parameters"
    extra = set(req.strategy.model_dump(exclude_defaults=True)) - {"name", "params"}
    if extra:
        name = sorted(extra)[0]
        return f"strategy.{name}", f"the nvflare engine does not support strategy.{name}"
    privacy = req.privacy.model_dump(exclude_defaults=True, exclude_none=True)
    if privacy:
        name = sorted(privacy)[0]
        what = {"dp": "local DP-SGD", "central_dp": "central DP"}.get(name, name)
        return f"privacy.{name}", (
            f"the nvflare engine does not support privacy.{name} ({what}); use engine 'flower'"
        )
    return None


def check_job(req: FlJobIn) -> tuple[str, str] | None:
    """``(field, reason)`` why the job API refuses an nvflare job (an option it does not run, or the
    ``flare`` extra missing); None when it can run."""
    refused = unsupported(req)
    if refused is not None:
        return refused
    reason = missing_extra()
    return ("engine", reason) if reason is not None else None


def node_id(device_id: str) -> int:
    """The stable FLARE-side id of a participant (56 bits of SHA-256 of its device id): the key its
    round reports use, like a Flower node id."""
    return int.from_bytes(hashlib.sha256(device_id.encode()).digest()[:7], "big")


# ------------------------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class JobPlan:
    """Everything the child process needs (written as JSON next to the FLARE workspace)."""

    job_id: str
    sites: list[str]  # FLARE client names: the participants' device ids
    network: str
    rounds: int
    min_clients: int
    dataset: str  # path of the staged registered dataset (.npz with x, y)
    root: str  # <workdir>/nvflare: data/, job/, workspace/
    seed: int = 0
    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 0.1
    momentum: float = 0.0
    initial: str | None = None  # .npz of the start parameters
    test_fraction: float = 0.2
    threads: int = 2
    python_path: list[str] = field(default_factory=list)

    @property
    def data_dir(self) -> Path:
        return Path(self.root) / "data"

    @property
    def jobs_dir(self) -> Path:
        return Path(self.root) / "job"

    @property
    def workspace(self) -> Path:
        return Path(self.root) / "workspace"

    @property
    def server_dir(self) -> Path:
        return self.workspace / "server" / "simulate_job"

    @classmethod
    def load(cls, path: Path) -> JobPlan:
        return cls(**json.loads(path.read_text()))

    def dump(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1))


def partition_dataset(
    dataset: Path, sites: list[str], out_dir: Path, *, seed: int = 0, test_fraction: float = 0.2
) -> dict[str, int]:
    """Split the registered dataset into one ``<site>.npz`` per site (its training shard plus the
    common held-out test split, the layout of a device's local data); site -> training examples."""
    import numpy as np

    from edge_agent.learning.data import DataError, load_local_data

    try:
        data = load_local_data(dataset)
    except DataError as exc:
        raise EngineError(
            f"the nvflare engine trains on the model's registered dataset, an .npz with x and y: {exc}"
        ) from exc
    n = len(data.y)
    n_test = max(1, round(n * test_fraction))
    if n - n_test < len(sites):
        raise EngineError(f"the registered dataset has {n} examples: too few for {len(sites)} participants")
    order = np.random.default_rng(seed).permutation(n)
    test, train = order[:n_test], order[n_test:]
    out_dir.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    for site, shard in zip(sites, np.array_split(train, len(sites)), strict=True):
        np.savez(
            out_dir / f"{site}.npz",
            x=data.x[shard],
            y=data.y[shard],
            x_test=data.x[test],
            y_test=data.y[test],
        )
        counts[site] = len(shard)
    return counts


def export_job(plan: JobPlan) -> Path:
    """Export the plan as a FLARE job folder with the Job Recipe API; its path."""
    from nvflare.app_opt.pt.recipes.fedavg import FedAvgRecipe
    from nvflare.recipe.utils import add_final_global_evaluation

    from controller.federation import nvflare_client

    args: dict[str, Any] = {"network": plan.network, "seed": plan.seed}
    if plan.initial:
        args["initial"] = plan.initial
    script_args = [
        f"--data-dir {plan.data_dir}",
        f"--network {plan.network}",
        f"--seed {plan.seed}",
        f"--epochs {plan.local_epochs}",
        f"--batch-size {plan.batch_size}",
        f"--lr {plan.lr!r}",
        f"--momentum {plan.momentum!r}",
    ]
    recipe = FedAvgRecipe(
        name=JOB_NAME,
        model={"class_path": f"{nvflare_client.__name__}.FedgeNetwork", "args": args},
        # every participant trains every round (Flower's fraction 1.0); the simulator starts them all
        min_clients=len(plan.sites),
        num_rounds=plan.rounds,
        train_script=str(Path(nvflare_client.__file__).resolve()),
        train_args=" ".join(script_args),
        key_metric="",  # no "best model" selection: the result is the last round's global model
    )
    add_final_global_evaluation(recipe, participating_clients=list(plan.sites))
    plan.jobs_dir.mkdir(parents=True, exist_ok=True)
    recipe.export(job_dir=str(plan.jobs_dir))
    return plan.jobs_dir / JOB_NAME


def _model_bytes(plan: JobPlan) -> int:
    from controller.federation.nvflare_client import FedgeNetwork

    model = FedgeNetwork(plan.network, plan.seed)
    return sum(int(t.numel()) * int(t.element_size()) for t in model.state_dict().values())


def _exit_with_parent(parent: int, interval: float = 1.0) -> None:
    """End this process when the controller that started it is gone (it runs in a session of its own, so
    a killed controller would otherwise leave it running), and FLARE's process tree with it: its simulator
    server and client workers run in sessions of their own and would outlive this process."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        try:
            import psutil  # type: ignore[import-untyped]

            tree = psutil.Process().children(recursive=True)
            for proc in tree:
                with contextlib.suppress(psutil.Error):
                    proc.kill()
            psutil.wait_procs(tree, timeout=10)
        finally:
            os._exit(3)

    threading.Thread(target=watch, name="fedge-parent-watch", daemon=True).start()


def _child(plan_path: Path) -> int:
    """The child process: partition, export, simulate; its exit status."""
    _exit_with_parent(os.getppid())
    from nvflare.private.fed.app.simulator.simulator_runner import SimulatorRunner

    plan = JobPlan.load(plan_path)
    state = plan_path.parent / "child.json"
    counts = partition_dataset(
        Path(plan.dataset), plan.sites, plan.data_dir, seed=plan.seed, test_fraction=plan.test_fraction
    )
    job_dir = export_job(plan)
    state.write_text(json.dumps({"examples": counts, "model_bytes": _model_bytes(plan)}))
    runner = SimulatorRunner(
        job_folder=str(job_dir),
        workspace=str(plan.workspace),
        clients=",".join(plan.sites),
        threads=max(1, min(plan.threads, len(plan.sites))),
    )
    return int(runner.run() or 0)


# ------------------------------------------------------------------------------------------ reports
def _metrics(items: Iterable[Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in items:
        if isinstance(item, dict) and isinstance(item.get("name"), str):
            value = item.get("value")
            if isinstance(value, int | float) and not isinstance(value, bool):
                out[item["name"]] = float(value)
    return out


def _weighted(rows: list[tuple[dict[str, float], float]], keys: Iterable[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key in keys:
        pairs = [(m[key], w) for m, w in rows if key in m]
        total = sum(w for _, w in pairs)
        if pairs and total > 0:
            out[key] = sum(v * w for v, w in pairs) / total
    return out


TRAIN_KEYS = ("train_loss", "train_accuracy")
EVAL_KEYS = ("eval_loss", "eval_accuracy")


class RoundParser:
    """Turns FLARE's ``round_metrics.jsonl`` records and final evaluation into fedge round reports
    (the ``RoundReport`` JSON the Flower ServerApp sends), naming clients by :func:`node_id`."""

    def __init__(self, job_id: str, sites: list[str], model_bytes: int = 0) -> None:
        self.job_id = job_id
        self.sites = list(sites)
        self.model_bytes = model_bytes
        self.rounds_seen: list[int] = []
        self.last_eval: dict[str, float] = {}
        self.initial_eval: dict[str, float] = {}  # the start model, scored before round 1's training
        self._last_time = time.monotonic()

    def _clients(self, sites: Mapping[str, dict[str, float]], keys: Iterable[str]) -> list[dict[str, Any]]:
        keys = tuple(keys)
        clients = []
        for site, metrics in sites.items():
            picked = {k: metrics[k] for k in keys if k in metrics}
            if "num_examples" in metrics and keys == TRAIN_KEYS:
                picked["num-examples"] = metrics["num_examples"]
            if "num_test_examples" in metrics and keys == EVAL_KEYS:
                picked["num-examples"] = metrics["num_test_examples"]
            clients.append({"node_id": node_id(site), "site": site, "metrics": picked})
        return clients

    def _report(
        self,
        kind: str,
        fedge_round: int,
        sites: Mapping[str, dict[str, float]],
        keys: tuple[str, ...],
        weight_key: str,
        *,
        sent: int,
        received: int,
        seconds: float,
    ) -> dict[str, Any]:
        rows = [(m, m.get(weight_key, 1.0)) for m in sites.values()]
        return {
            "type": "round",
            "run_id": 0,
            "job_id": self.job_id,
            "kind": kind,
            "round": fedge_round,
            "metrics": _weighted(rows, keys),
            "participants": len(sites),
            "failures": 0,
            "budget_refused": [],
            "rejected": [],
            "bytes_sent": sent,
            "bytes_received": received,
            "seconds": seconds,
            "clients": self._clients(sites, keys),
        }

    def on_record(self, record: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Reports for one FLARE round record: the evaluation of the model it received (fedge round
        ``k``, from FLARE round ``k`` >= 1) and its training (fedge round ``k + 1``)."""
        flare_round = int(record["round"])
        sites: dict[str, dict[str, float]] = {}
        for site in record.get("sites") or []:
            if isinstance(site, dict) and isinstance(site.get("name"), str):
                sites[site["name"]] = _metrics(site.get("metrics") or [])
        now = time.monotonic()
        elapsed, self._last_time = now - self._last_time, now  # this round's train task, as seen here
        reports = []
        if flare_round == 0:
            self.initial_eval = _weighted(
                [(m, m.get("num_test_examples", 1.0)) for m in sites.values()], EVAL_KEYS
            )
        if flare_round >= 1:
            # scored inside this round's train task (no phase of its own)
            reports.append(self._report("evaluate", flare_round, sites, EVAL_KEYS, "num_test_examples",
                                        sent=0, received=0, seconds=0.0))  # fmt: skip
        sent, received = self.model_bytes * len(self.sites), self.model_bytes * len(sites)
        reports.append(self._report("train", flare_round + 1, sites, TRAIN_KEYS, "num_examples",
                                    sent=sent, received=received, seconds=elapsed))  # fmt: skip
        self.rounds_seen.append(flare_round + 1)
        return reports

    def on_final(self, results: Mapping[str, Any]) -> dict[str, Any]:
        """The last round's ``evaluate`` report from FLARE's final global evaluation."""
        sites = {
            site: {k: float(v) for k, v in (models.get(SERVER_MODEL_KEY) or {}).items() if _number(v)}
            for site, models in results.items()
            if isinstance(models, dict)
        }
        sites = {s: m for s, m in sites.items() if m}
        last = self.rounds_seen[-1] if self.rounds_seen else 0
        now = time.monotonic()
        elapsed, self._last_time = now - self._last_time, now
        sent = self.model_bytes * len(self.sites)
        report = self._report("evaluate", last, sites, EVAL_KEYS, "num_test_examples",
                              sent=sent, received=0, seconds=elapsed)  # fmt: skip
        self.last_eval = dict(report["metrics"])
        return report


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def read_new_records(path: Path, offset: int) -> tuple[list[dict[str, Any]], int]:
    """Complete JSON lines of ``path`` after byte ``offset``; (records, new offset)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            chunk = fh.read()
    except FileNotFoundError:
        return [], offset
    end = chunk.rfind(b"\n")
    if end < 0:
        return [], offset
    records = []
    for line in chunk[: end + 1].splitlines():
        if line.strip():
            with contextlib.suppress(ValueError):
                value = json.loads(line)
                if isinstance(value, dict) and "round" in value:
                    records.append(value)
    return records, offset + end + 1


def final_params(model_file: Path, output: Path) -> None:
    """FLARE's saved global model (a PTFileModelPersistor checkpoint, read with ``weights_only``) -> .npz."""
    import numpy as np
    import torch

    try:
        saved = torch.load(model_file, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError) as exc:
        raise EngineError(f"cannot read FLARE's global model {model_file.name}: {exc}") from exc
    state = saved.get("model", saved) if isinstance(saved, Mapping) else None
    if not isinstance(state, Mapping) or not state:
        raise EngineError(f"FLARE's global model {model_file.name} holds no parameters")
    arrays = {
        str(k): np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v) for k, v in state.items()
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    np.savez(output, **arrays)  # type: ignore[arg-type]


def _last_error(*logs: Path) -> str:
    for path in logs:
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in reversed(lines):
            if "Error" in line or "ERROR" in line or "Traceback" in line:
                return line.strip()[:500]
    return ""


# ------------------------------------------------------------------------------------------- engine
class _Tree:
    """The child process and every descendant seen (FLARE puts its workers in their own sessions, so a
    process-group kill would miss them); stopped by pid."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.seen: dict[int, Any] = {}

    def scan(self) -> None:
        try:
            import psutil
        except ImportError:  # nvflare depends on psutil; without it only the group is stopped
            return
        with contextlib.suppress(psutil.Error):
            for p in psutil.Process(self.proc.pid).children(recursive=True):
                self.seen.setdefault(p.pid, p)

    def stop(self) -> None:
        self.scan()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        for p in self.seen.values():
            with contextlib.suppress(Exception):
                if p.is_running():
                    p.terminate()
        try:
            self.proc.wait(STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        self.reap()

    def reap(self) -> None:
        """Kill descendants that outlived the child (only those it started, checked by create time)."""
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for p in self.seen.values():
            with contextlib.suppress(Exception):
                if p.is_running():
                    p.terminate()
                    p.wait(max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(Exception):
                if p.is_running():
                    p.kill()


class NvflareEngine(FederationEngine):
    """FLARE's simulator on the controller host (see the module docstring). One job at a time."""

    name = ENGINE
    deploys_to_devices = False

    def __init__(self, root: Path, *, python: str | None = None, threads: int = 2) -> None:
        self.root = Path(root)
        self.python = python or sys.executable
        self.threads = threads
        self._lock = threading.Lock()

    @property
    def identity(self) -> str:
        return f"nvflare-simulator:{self.root}"

    def health(self) -> None:
        reason = missing_extra()
        if reason is not None:
            raise EngineUnavailable(reason)

    def start(self) -> None:
        self.health()
        self.root.mkdir(parents=True, exist_ok=True)

    def fleet_endpoint(self) -> FleetEndpoint:
        raise EngineError(
            "devices do not connect to the nvflare engine: its FLARE clients run on the controller"
        )

    def register_node(self, device_id: str, public_key_pem: bytes) -> int:
        return node_id(device_id)

    def unregister_node(self, node_id: int) -> None:
        return None  # nothing is registered: a revoked device is left out of the next job it is chosen for

    def plan(self, spec: FederationSpec) -> JobPlan:
        if not spec.participant_devices or spec.dataset_path is None:
            raise EngineError("the nvflare engine needs the participants' device ids and the staged dataset")
        here = str(Path(__file__).resolve().parents[2])
        return JobPlan(
            job_id=spec.job_id,
            sites=list(spec.participant_devices),
            network=spec.network,
            rounds=spec.rounds,
            min_clients=spec.min_clients,
            dataset=str(spec.dataset_path),
            root=str(spec.workdir / "nvflare"),
            seed=spec.seed,
            local_epochs=spec.local_epochs,
            batch_size=spec.batch_size,
            lr=spec.lr,
            momentum=spec.momentum,
            initial=str(spec.initial_path) if spec.initial_path else None,
            threads=self.threads,
            python_path=[here],
        )

    def run(
        self, spec: FederationSpec, cancel: threading.Event, on_round: ReportCallback
    ) -> FederationOutcome:
        from fedge_common.quiet import QUIET_ENV

        began = time.monotonic()
        plan = self.plan(spec)
        root = Path(plan.root)
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        plan_path = root / "plan.json"
        plan.dump(plan_path)
        env = {**os.environ, **QUIET_ENV, "PYTHONPATH": os.pathsep.join(
            [*plan.python_path, *filter(None, [os.environ.get("PYTHONPATH")])])}  # fmt: skip
        for proxy in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
            env.pop(proxy, None)
        env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
        log_path = root / "simulator.log"
        with self._lock, open(log_path, "wb") as out:
            proc = subprocess.Popen(
                [self.python, "-m", __name__, str(plan_path)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=root,
                start_new_session=True,
            )
            tree = _Tree(proc)
            log.info(
                "job %s: FLARE simulator started (pid %d, %d clients)", spec.job_id, proc.pid, len(plan.sites)
            )
            try:
                return self._watch(spec, plan, tree, cancel, on_round, began, log_path)
            finally:
                if proc.poll() is None:
                    tree.stop()
                else:
                    tree.reap()
                shutil.rmtree(plan.data_dir, ignore_errors=True)  # the partitions: no copy of the data kept

    def _watch(
        self,
        spec: FederationSpec,
        plan: JobPlan,
        tree: _Tree,
        cancel: threading.Event,
        on_round: ReportCallback,
        began: float,
        log_path: Path,
    ) -> FederationOutcome:
        metrics_file = plan.server_dir / "metrics" / "round_metrics.jsonl"
        parser: RoundParser | None = None
        offset = 0
        last_progress = time.monotonic()
        stall_s = 2 * spec.round_timeout_s + 120.0
        run_id = f"nvflare-sim:{spec.job_id}"

        def ended(
            state: JobState, reason: str | None = None, summary: Mapping[str, Any] | None = None
        ) -> FederationOutcome:
            output = spec.output_path if spec.output_path.exists() and state is JobState.SUCCEEDED else None
            return FederationOutcome(
                state, reason, run_id, output, dict(summary or {}), time.monotonic() - began
            )

        def drain() -> None:
            nonlocal parser, offset, last_progress
            if parser is None:
                child = Path(plan.root) / "child.json"
                if not child.exists():
                    return
                info = json.loads(child.read_text())
                parser = RoundParser(spec.job_id, plan.sites, int(info.get("model_bytes") or 0))
            records, offset = read_new_records(metrics_file, offset)
            for record in records:
                for report in parser.on_record(record):
                    on_round(report)
                last_progress = time.monotonic()

        while tree.proc.poll() is None:
            if cancel.wait(POLL_SECONDS):
                tree.stop()
                return ended(JobState.CANCELLED, "cancelled")
            tree.scan()
            with contextlib.suppress(ValueError, OSError):
                drain()
            now = time.monotonic()
            if now - began > spec.timeout_s:
                tree.stop()
                return ended(JobState.FAILED, f"timed out after {spec.timeout_s:.0f} s")
            if now - last_progress > stall_s:
                tree.stop()
                return ended(
                    JobState.FAILED, f"no FLARE round ended for {stall_s:.0f} s; the job was stopped"
                )
        drain()
        rc = tree.proc.returncode
        server_log = plan.workspace / "server" / "log.txt"
        if rc != 0:
            reason = _last_error(log_path, server_log) or f"exit status {rc}"
            return ended(JobState.FAILED, f"the FLARE simulator failed ({rc}): {reason}")
        if parser is None or len(parser.rounds_seen) < spec.rounds:
            seen = len(parser.rounds_seen) if parser else 0
            reason = _last_error(server_log, log_path)
            return ended(
                JobState.FAILED, f"FLARE ended after {seen} of {spec.rounds} round(s): {reason}".rstrip(": ")
            )
        results_file = plan.server_dir / "cross_site_val" / "cross_val_results.json"
        try:
            final = parser.on_final(json.loads(results_file.read_text()))
        except (OSError, ValueError) as exc:
            return ended(JobState.FAILED, f"FLARE's final global evaluation left no results: {exc}")
        on_round(final)
        try:
            final_params(plan.server_dir / "app_server" / FINAL_MODEL, spec.output_path)
        except EngineError as exc:
            return ended(JobState.FAILED, str(exc))
        summary = {
            "type": "finished",
            "run_id": run_id,
            "job_id": spec.job_id,
            "rounds": len(parser.rounds_seen),
            "seconds": time.monotonic() - began,
            "output_path": str(spec.output_path),
            "final_metrics": parser.last_eval,
            "initial_metrics": parser.initial_eval,
            "engine": ENGINE,
            "flare_workspace": str(plan.workspace),
        }
        on_round(summary)
        return ended(JobState.SUCCEEDED, None, summary)


if __name__ == "__main__":
    sys.exit(_child(Path(sys.argv[1])))
