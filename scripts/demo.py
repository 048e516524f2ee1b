"""fedge demo on embedded defaults (run by ``make demo``).

Starts the controller (SQLite + local artifact store + in-process EVM under ``FEDGE_DATA_DIR``, default
``./.fedge``), registers scikit-learn's digits as a dataset (.npz), registers a model for it, trains it in a
job, translates it to ONNX (validated, int8 variant), and prints ids, hashes and where everything is
stored. Then it enrolls three edge agents (in-process, ``simulator.fleet``; state under
``FEDGE_DATA_DIR/agents/``), deploys the ONNX model to them in two waves and measures each agent's accuracy
on the held-out digits through its local inference API. Then federated learning: the three agents are
handed over to real ``fedge-agent run`` processes with FL enabled, each with its own digits partition
(written on the device side by ``simulator.fl``, never uploaded) and a privacy budget; a 3-round FedAvg
job with local DP-SGD runs through their ``flower-supernode`` children (node auth with the enrolled keys,
TLS with the pinned CA) while they keep serving; the result is registered (SHA-256, chain record), the
run is recorded on chain, and the result is translated to ONNX and rolled out in canary waves. Last, a
short streaming run (``scripts/demo_streaming.py``): a simulated smart meter publishes a SimBench-shaped
load stream over MQTT, an agent's online learner forecasts and learns, the stream's level shifts +20 % and
the monitor's drift alarm reaches the controller (MAPE, windows to detect, a plot). Data persists: a
second run lists the first run's datasets and reuses the agents enrolled by the first run (they move to
the new model; their privacy ledgers keep counting).
"""

from __future__ import annotations

import io
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from rich.console import Console
from rich.table import Table

from controller.client import FedgeAPIError, FedgeClient
from controller.schemas.fl import FlJobOut
from controller.schemas.jobs import TERMINAL_JOB_STATES, JobOut
from controller.schemas.translation import TranslateResult
from fedge_common.quiet import QUIET_ENV

console = Console()

# every process the demo starts keeps to this machine (no telemetry, update checks, usage stats)
QUIET = QUIET_ENV
FL_DATASET = "digits"  # the devices' name for their data (their privacy ledgers' key)
FL_BUDGET = 50.0  # epsilon each demo device grants on it, all jobs (demo runs) together
FL_EPSILON, FL_DELTA, FL_ROUNDS, FL_NETWORK = 8.0, 1e-5, 3, "digits-linear"
FL_PROGRAMS = ("flower-supernode", "flwr-clientapp", "flower-superexec", "flower-superlink")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def admin_token(data_dir: Path) -> str:
    """The demo's admin token: kept (0600) beside the data so later runs can use it."""
    path = data_dir / "demo-admin-token"
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    token = "fedge_demo_" + secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token)
    return token


def digits_npz() -> tuple[bytes, str]:
    """scikit-learn's digits (1,797 8x8 images, shipped inside the wheel) as a compressed .npz."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = digits.images.astype(np.float32)[:, None, :, :] / 16.0
    buf = io.BytesIO()
    np.savez_compressed(buf, x=x, y=digits.target.astype(np.int64))
    return buf.getvalue(), "(1,8,8)"


def example_package(tmp: Path, name: str) -> Path:
    """examples/<name> as a training package (.tar.gz): its SHA-256 is the model's training digest."""
    import tarfile

    root = Path(__file__).resolve().parents[1] / "examples"
    archive = tmp / f"{name}.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(root / "__init__.py", arcname="examples/__init__.py")
        tf.add(
            root / name, arcname=f"examples/{name}", filter=lambda i: None if "__pycache__" in i.name else i
        )
    return archive


def train_with_progress(fc: FedgeClient, model_id: str) -> JobOut:
    """Start the training job and show its progress and metrics until it ends."""
    from rich.progress import BarColumn, Progress

    job_id = fc.train(model_id).job_id
    with Progress(
        "training", BarColumn(), "{task.percentage:>3.0f}%", "{task.fields[info]}", console=console
    ) as bar:
        task = bar.add_task("train", total=1.0, info="queued")
        while True:
            job = fc.job(job_id)
            m = job.metrics
            info = job.status
            if "holdout_accuracy" in m:
                info += f"  epoch {m.get('epoch')}  loss {m.get('loss', 0):.3f}"
                info += f"  holdout acc {m['holdout_accuracy']:.3f}"
            bar.update(task, completed=job.progress or 0.0, info=info)
            if job.status in TERMINAL_JOB_STATES:
                return job
            time.sleep(0.5)


def start_controller(data_dir: Path, token: str, port: int, broker_port: int) -> subprocess.Popen[bytes]:
    """The controller on embedded defaults (its MQTT broker on ``broker_port``), with its FL engine (a
    supervised TLS SuperLink and the Fleet-only front, both on free loopback ports, started at the first
    FL job)."""
    env = {
        **os.environ,
        **QUIET,
        "FEDGE_DATA_DIR": str(data_dir),
        "FEDGE_ADMIN_TOKEN": token,
        "FEDGE_BROKER_PORT": str(broker_port),
        "FEDGE_FL_ENGINE": "flower",
        "FEDGE_FL_FLEET_HOST": "127.0.0.1",
        "FEDGE_FL_NODE_WAIT_SECONDS": "120",
        "FEDGE_FL_JOB_TIMEOUT_SECONDS": "900",
    }
    log = open(data_dir / "controller.log", "ab")  # noqa: SIM115 - handed to the child process
    proc = subprocess.Popen(
        [sys.executable, "-m", "controller.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=log,
    )
    client = FedgeClient(f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + 90
    while True:
        try:
            client.health()
            break
        except Exception:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"controller did not start; see {data_dir / 'controller.log'}") from None
            time.sleep(0.2)
    client.close()
    return proc


def repoint_agents(root: Path, broker_port: int) -> None:
    """Agents enrolled by an earlier run keep the broker URL of that run's controller (the embedded broker
    takes a new port each run): point them at this run's broker (the controller URL is repointed by
    ``simulator.fleet``). Without it their telemetry would wait in their outboxes for the old broker."""
    from urllib.parse import urlsplit

    from fedge_common.files import atomic_write

    for path in sorted(root.glob("agent-*/identity.json")):
        meta = json.loads(path.read_text())
        old = meta.get("broker_url")
        if not old:
            continue
        parts = urlsplit(old)
        new = f"{parts.scheme}://{parts.hostname}:{broker_port}"
        if new != old:
            meta["broker_url"] = new
            atomic_write(path, json.dumps(meta, indent=2).encode())


HOLDOUT, SEED = 0.2, 0  # the training job's defaults (examples/digits_cnn/train.py: split)


def held_out_digits() -> tuple[np.ndarray, np.ndarray]:
    """The digits the training job held out (same seeded permutation as ``examples.digits_cnn.train``)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = digits.images.astype(np.float32)[:, None, :, :] / 16.0
    order = np.random.default_rng(SEED).permutation(len(x))
    idx = order[len(x) - round(len(x) * HOLDOUT) :]
    return x[idx], digits.target[idx]


def infer_accuracy(api_url: str, x: np.ndarray, y: np.ndarray, batch: int = 128) -> tuple[float, float, str]:
    """Top-1 accuracy through the agent's local API (POST /v1/infer); (accuracy, ms per call, model)."""
    import httpx

    correct, calls, started, served = 0, 0, time.perf_counter(), ""
    with httpx.Client(base_url=api_url, timeout=60) as http:
        for i in range(0, len(x), batch):
            r = http.post("/v1/infer", json={"inputs": {"x": x[i : i + batch].tolist()}})
            r.raise_for_status()
            body = r.json()
            probs = np.asarray(next(iter(body["outputs"].values())))
            correct += int((probs.argmax(axis=1) == y[i : i + batch]).sum())
            calls += 1
            served = f"{body['model_id'][:8]}.. v{body['version']}"
    return correct / len(x), (time.perf_counter() - started) * 1000 / calls, served


def deploy_to_agents(
    fc: FedgeClient, url: str, token: str, data_dir: Path, model_id: str, translation: TranslateResult
) -> list[tuple[int, str, Path]]:
    """Enroll (or reuse) three agents, roll the ONNX model out in two waves, check them on held-out digits;
    returns (index, device id, state dir) of each agent."""
    from simulator.fleet import Fleet

    console.rule("edge agents")
    q = translation.quantized
    candidates = [(q.version, "int8")] if q is not None and q.kept and q.version is not None else []
    candidates.append((translation.version, "fp32"))
    x, y = held_out_digits()
    with Fleet(
        url, token, data_dir / "agents", poll_interval=0.5, serve_api=True, labels={"demo": "digits"}
    ) as fleet:
        known = sum((data_dir / "agents" / f"agent-{i:04d}" / "identity.json").exists() for i in range(3))
        fleet.ensure(3)
        reused = sum(1 for sim in fleet.agents if sim.active is not None)
        console.print(
            f"agents: {len(fleet.agents)} ({known} state dirs from earlier runs, {reused} serving an earlier "
            f"model), state under {data_dir / 'agents'}"
        )
        fleet.start()
        dep_id, version, flavour = "", 0, ""
        posted = time.time()
        for version, flavour in candidates:
            try:
                dep_id = fleet.deploy(model_id, version, waves=[0.34, 1.0])
                break
            except FedgeAPIError as exc:
                console.print(f"[yellow]{flavour} v{version} not deployable[/yellow]: {exc}")
        if not dep_id:
            raise SystemExit("no deployable ONNX version")
        console.print(f"deployment {dep_id}: {model_id} v{version} ({flavour}), waves [0.34, 1.0]")
        dep = fleet.wait_deployment(dep_id, timeout=120)
        if dep.state != "succeeded":
            raise SystemExit(f"deployment {dep.state}: {dep.error}")
        fleet.wait_active(model_id, version, timeout=30)
        waves = {t.device_id: (t.wave, t.state) for t in dep.devices}
        table = Table(
            "agent", "device id", "wave", "rollout", "active after", "served", "held-out acc", "ms/call",
            title=f"edge agents: accuracy on {len(x)} held-out digits via POST /v1/infer (batches of 128)",
        )  # fmt: skip
        for sim in fleet.agents:
            assert sim.api_url is not None
            acc, ms, served = infer_accuracy(sim.api_url, x, y)
            done = sim.succeeded_at(dep_id)
            wave, state = waves.get(sim.device_id, (-1, "?"))
            table.add_row(
                f"#{sim.index}",
                sim.device_id,
                str(wave + 1),
                state,
                f"{done - posted:.1f} s" if done else "-",
                served,
                f"{acc:.4f}",
                f"{ms:.1f}",
            )
        console.print(table)
        rows = {d.id: d for d in fc.devices()}
        online = sum(1 for i in fleet.device_ids if i in rows and rows[i].online)
        console.print(f"controller view: {online}/{len(fleet.agents)} agents online, deployment {dep.state}")
        return [(sim.index, sim.device_id, sim.state_dir) for sim in fleet.agents]


# ------------------------------------------------------------------ federated learning on the agents


def fl_missing() -> str | None:
    """Why FL cannot run in this environment (None: it can): the train extra's programs and packages."""
    import importlib.util

    here = Path(sys.executable).parent
    programs = [p for p in FL_PROGRAMS if not (here / p).exists()]
    packages = [m for m in ("flwr", "torch", "opacus") if importlib.util.find_spec(m) is None]
    if not programs and not packages:
        return None
    return (
        f"missing {', '.join(programs + packages)} next to {sys.executable}; "
        "install the train extra: pip install 'fedge[agent,train]' (or run `make demo`)"
    )


@dataclass
class FlAgent:
    """One of the demo's agents handed over to a real ``fedge-agent run`` process with FL enabled."""

    index: int
    device_id: str
    state_dir: Path
    data: Path
    port: int
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def tail(self, lines: int = 15) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def ledger(self) -> dict[str, Any]:
        """The device's own privacy ledger on FL_DATASET (``fedge-agent privacy``)."""
        done = subprocess.run(
            [sys.executable, "-m", "edge_agent.cli", "privacy", "--state-dir", str(self.state_dir)],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode != 0:
            raise SystemExit(f"fedge-agent privacy failed on agent #{self.index}: {done.stderr.strip()}")
        entries: list[dict[str, Any]] = json.loads(done.stdout)
        return next(e for e in entries if e["dataset"] == FL_DATASET)


def start_fl_agents(
    data_dir: Path, agents: list[tuple[int, str, Path]], tag: str, started: list[FlAgent]
) -> tuple[np.ndarray, np.ndarray]:
    """Give each agent its own digits partition (``simulator.fl``, IID; written on the device side only,
    never uploaded) and run it as ``fedge-agent run`` with FL enabled (appended to ``started`` at once, so
    the caller stops them whatever happens); wait for their local APIs. Returns the FL test set (the union
    of the agents' test parts)."""
    from simulator.fl.partition import make_federated_digits

    data = make_federated_digits(len(agents), alpha=None, seed=0)
    folder = data_dir / "agents" / "fl-data"
    folder.mkdir(parents=True, exist_ok=True)
    out = started
    for (index, device_id, state_dir), (x, y), (xt, yt) in zip(agents, data.train, data.test, strict=True):
        path = folder / f"agent-{index:04d}.npz"
        with path.open("wb") as fh:
            np.savez(fh, x=x, y=y, x_test=xt, y_test=yt)
        env = {
            **os.environ,
            **QUIET,
            "FEDGE_FL_TAG": tag,
            "FEDGE_AGENT_FL_ENABLED": "true",
            "FEDGE_AGENT_FL_DATA_PATH": str(path),
            "FEDGE_AGENT_FL_DATASET": FL_DATASET,
            "FEDGE_AGENT_FL_PRIVACY_BUDGET": str(FL_BUDGET),
            "FEDGE_AGENT_FL_PRIVACY_DELTA": str(FL_DELTA),
        }
        log = data_dir / "agents" / f"agent-{index:04d}.log"
        agent = FlAgent(index, device_id, state_dir, path, free_port(), env, log)
        argv = [
            sys.executable,
            "-m",
            "edge_agent.cli",
            "run",
            "--state-dir",
            str(state_dir),
            "--api-port",
            str(agent.port),
            "--poll-interval",
            "0.5",
        ]
        with log.open("ab") as fh:
            agent.proc = subprocess.Popen(
                argv, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
            )
        out.append(agent)
    deadline = time.monotonic() + 90
    for agent in out:
        while True:
            assert agent.proc is not None
            if agent.proc.poll() is not None:
                raise SystemExit(f"agent #{agent.index} exited with {agent.proc.returncode}:\n{agent.tail()}")
            try:
                if httpx.get(f"{agent.url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"agent #{agent.index} did not serve its local API; see {agent.log}")
            time.sleep(0.3)
    table = Table(
        "agent",
        "device id",
        "train / test examples",
        "labels",
        "local API",
        "log",
        title="FL agents: fedge-agent run with FEDGE_AGENT_FL_ENABLED (own data, budget "
        f"epsilon {FL_BUDGET:g} on '{FL_DATASET}')",
    )
    for agent, (_, y), (_, yt) in zip(out, data.train, data.test, strict=True):
        table.add_row(
            f"#{agent.index}",
            agent.device_id,
            f"{len(y)} / {len(yt)}",
            f"{len(set(y.tolist()))} classes",
            agent.url,
            str(agent.log),
        )
    console.print(table)
    return data.x_test, data.y_test


def stop_fl_agents(agents: list[FlAgent], tag: str) -> None:
    """SIGTERM every agent (each stops its SuperNode), SIGKILL what is left; then any tagged leftover."""
    for agent in agents:
        if agent.proc is not None and agent.proc.poll() is None:
            agent.proc.send_signal(signal.SIGTERM)
    for agent in agents:
        if agent.proc is None:
            continue
        try:
            agent.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(agent.proc.pid, signal.SIGKILL)
            agent.proc.wait(10)
    try:
        from controller.federation.flower import kill_tagged
    except ImportError:
        return
    kill_tagged(tag)


def fl_rounds_table(job: FlJobOut) -> Table:
    def num(v: float | None, fmt: str = ".4f") -> str:
        return "-" if v is None else format(v, fmt)

    table = Table(
        "round",
        "train loss",
        "train acc",
        "eval loss",
        "eval acc",
        "devices",
        "stragglers",
        "epsilon max",
        "s",
        title=f"FL job {job.job_id}: {job.status}, {job.rounds_completed}/{job.rounds} rounds",
    )
    for r in job.metrics:
        table.add_row(
            str(r.round),
            num(r.train_loss),
            num(r.train_accuracy),
            num(r.eval_loss),
            num(r.eval_accuracy),
            str(len(r.participants)),
            str(len(r.stragglers)),
            num(max(r.epsilon.values()) if r.epsilon else None),
            f"{r.seconds:.1f}",
        )
    return table


def _fl_join_failure(fc: FedgeClient, agents: list[FlAgent], job_id: str) -> str | None:
    """An agent that refused (or failed) the job's fl-join, or whose process ended: why."""
    for agent in agents:
        if agent.proc is not None and agent.proc.poll() is not None:
            return f"agent #{agent.index} exited with {agent.proc.returncode}:\n{agent.tail()}"
        for cmd in fc.commands(agent.device_id, limit=10).items:
            if cmd.kind == "fl-join" and cmd.params.get("job_id") == job_id and cmd.state == "failed":
                return f"agent #{agent.index} did not join: {cmd.error} (log: {agent.log})"
    return None


def federated_learning(
    fc: FedgeClient, data_dir: Path, dataset_id: str, agents: list[tuple[int, str, Path]]
) -> None:
    """A 3-agent FL job with local DP on the demo's agents (real SuperNodes), its result registered and on
    chain, translated and rolled out in canary waves; inference keeps answering while they train."""
    console.rule("federated learning on the agents (Flower, local DP)")
    missing = fl_missing()
    if missing is not None:
        raise SystemExit(f"federated learning cannot start: {missing}")
    started = time.monotonic()
    tag = uuid.uuid4().hex
    fl_agents: list[FlAgent] = []
    try:
        x_test, y_test = start_fl_agents(data_dir, agents, tag, fl_agents)
        ids = [a.device_id for a in fl_agents]
        x_hold, y_hold = held_out_digits()
        model = fc.register_model(
            {
                "name": "digits-fl",
                "model_params": {"developer_id": "dev-demo", "organization_id": "org-demo"},
                "data_params": {"dataset_id": dataset_id},
            }
        )
        body = {
            "model": {"model_id": model.model_id, "network": FL_NETWORK},
            "participants": {"device_ids": ids},
            "min_clients": len(ids),
            "rounds": FL_ROUNDS,
            "lr": 0.5,
            "round_timeout": 180,
            "data": {"dataset": FL_DATASET},
            "privacy": {"dp": {"epsilon": FL_EPSILON, "delta": FL_DELTA, "max_grad_norm": 1.0}},
        }
        try:
            created = fc.fl_run(body)
        except FedgeAPIError as exc:
            hint = ""
            if exc.status == 422 and "epsilon" in str(exc):
                hint = (
                    f"\nthe agents' privacy budget on '{FL_DATASET}' may be spent by earlier runs (their "
                    f"ledgers: {data_dir / 'agents'}/agent-*/privacy/); use a fresh FEDGE_DATA_DIR"
                )
            raise SystemExit(f"the FL job was refused: {exc}{hint}") from None
        console.print(
            f"FL job {created.job_id}: model {model.model_id} ({FL_NETWORK}), {FL_ROUNDS} rounds, FedAvg, "
            f"local DP-SGD epsilon {FL_EPSILON:g} delta {FL_DELTA:g} per device, min {created.min_clients} "
            "devices per round; the agents get a signed fl-join and start their flower-supernode"
        )
        answers = {"calls": 0, "during_rounds": 0, "errors": 0}
        served_during: list[str] = []
        last_check = [0.0]

        def during(job: FlJobOut) -> None:
            live.update(fl_rounds_table(job))
            # the model served before the job keeps answering on agent #0 while it trains
            holding = bool(_supernode_status(fl_agents[0]).get("rounds_in_progress"))
            try:
                _, _, model_served = infer_accuracy(fl_agents[0].url, x_hold[:64], y_hold[:64])
                served_during.append(model_served)
                answers["calls"] += 1
            except httpx.HTTPError:
                answers["errors"] += 1
            answers["during_rounds"] += int(holding)
            if time.monotonic() - last_check[0] > 3:
                last_check[0] = time.monotonic()
                failure = _fl_join_failure(fc, fl_agents, created.job_id)
                if failure is not None:
                    fc.cancel_fl_job(created.job_id)
                    raise SystemExit(f"federated learning failed: {failure}")

        from rich.live import Live

        began = time.monotonic()
        with Live(console=console, refresh_per_second=2, transient=True) as live:
            job = fc.wait_fl_job(created.job_id, timeout=900, poll=1.0, on_update=during)
        job_s = time.monotonic() - began
        if job.status != "succeeded" or job.result is None:
            raise SystemExit(f"FL job {job.status}: {job.error}")
        console.print(
            f"job {job.status} in {job_s:.0f} s; agent #{fl_agents[0].index} answered {answers['calls']} "
            f"inference calls during the job ({answers['during_rounds']} while an FL round held its update "
            "lock), "
            f"served by {', '.join(sorted(set(served_during))) or '-'} (the model it served before the job), "
            f"{answers['errors']} failed"
        )
        fl_privacy_table(fc, fl_agents, job)
        result = job.result
        provenance = fc.model_provenance(model.model_id)
        console.rule("FL run on chain (record_fl_run, decoded)")
        if job.chain is not None:
            console.print_json(data=job.chain.model_dump(mode="json"))
        same = job.chain is not None and job.chain.final_model_hash == result.sha256
        console.print(
            f"result: model {result.model_id} v{result.version} ({result.kind}, {result.format}) sha256 "
            f"{result.sha256}; chain final_model_hash {'= the version' if same else 'MISMATCH'}; provenance "
            f"[bold]{'verified' if provenance.verified else 'NOT verified'}[/bold]"
        )
        onnx = fc.translate(model.model_id, source_version=result.version)
        console.print(
            f"translated v{result.version} to ONNX v{onnx.version} (max |PyTorch - ONNX| "
            f"{onnx.max_abs_diff:.2e})"
        )
        waves = [0.1, 1.0]
        dep_started = time.time()
        dep_id = fc.deploy(
            model.model_id, onnx.version, device_ids=ids, waves=waves, auto_rollback=True
        ).deployment_id
        dep = fc.wait_deployment(dep_id, timeout=180, poll=0.5)
        if dep.state != "succeeded":
            states = ", ".join(f"{t.device_id[:8]}.. {t.state}" for t in dep.devices)
            raise SystemExit(
                f"deployment {dep_id} of the FL model {dep.state} ({states}): {dep.error or ''} "
                f"(agent logs: {data_dir / 'agents'}/agent-*.log)"
            )
        x, y = x_test, y_test
        for agent in fl_agents:
            wait_serving(agent, model.model_id, onnx.version)
        table = Table(
            "agent",
            "device id",
            "wave",
            "rollout",
            "served",
            "test acc",
            "ms/call",
            title=f"FL model on the agents: deployment {dep_id} (waves {waves}, canary first, "
            f"automatic rollback), accuracy on the {len(x)} FL test digits via POST /v1/infer",
        )
        by_device = {t.device_id: t for t in dep.devices}
        for agent in fl_agents:
            target = by_device[agent.device_id]
            acc, ms, served = infer_accuracy(agent.url, x, y)
            table.add_row(
                f"#{agent.index}",
                agent.device_id,
                str(target.wave + 1),
                target.state,
                served,
                f"{acc:.4f}",
                f"{ms:.1f}",
            )
        console.print(table)
        console.print(
            f"federated learning: {time.monotonic() - started:.0f} s in all (job {job_s:.0f} s, deployment "
            f"{time.time() - dep_started:.0f} s)"
        )
    finally:
        stop_fl_agents(fl_agents, tag)


def wait_serving(agent: FlAgent, model_id: str, version: int, timeout: float = 30) -> None:
    """Until the agent's local API serves ``model_id`` v``version``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            r = httpx.get(f"{agent.url}/v1/model", timeout=2)
            if r.status_code == 200 and (r.json()["model_id"], r.json()["version"]) == (model_id, version):
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"agent #{agent.index} does not serve {model_id} v{version}; see {agent.log}")
        time.sleep(0.2)


def _supernode_status(agent: FlAgent) -> dict[str, Any]:
    try:
        status: dict[str, Any] = json.loads((agent.state_dir / "fl" / "supernode.json").read_text())
    except (OSError, ValueError):
        return {}
    return status


def fl_privacy_table(fc: FedgeClient, agents: list[FlAgent], job: FlJobOut) -> None:
    """Epsilon per device: the job's report, the device's own ledger and the controller's mirror."""
    console.print(fl_rounds_table(job))
    parts = {p.device_id: p for p in job.participants}
    table = Table(
        "agent",
        "device id",
        "rounds",
        "epsilon added by this job (ledger)",
        "job target",
        f"spent on '{FL_DATASET}' (ledger, all jobs)",
        "remaining / budget",
        "controller mirror",
        title=f"privacy: epsilon spent per device (delta {FL_DELTA:g}; the device's ledger is the authority)",
    )
    for agent in agents:
        ledger = agent.ledger()
        mine = ledger["jobs"].get(job.job_id, {})
        mirror = next(
            (d for d in fc.device_privacy(agent.device_id).datasets if d.dataset == FL_DATASET), None
        )
        part = parts[agent.device_id]
        table.add_row(
            f"#{agent.index}",
            agent.device_id[:8] + "..",
            str(part.rounds_trained),
            f"{mine.get('epsilon', 0):.4f}",
            f"{FL_EPSILON:g}",
            f"{ledger['spent_epsilon']:.4f}",
            f"{ledger['remaining_epsilon']:.4f} / {ledger['budget_epsilon']:g}",
            f"{mirror.epsilon_spent:.4f}" if mirror else "-",
        )
    console.print(table)
    console.print(
        f"epsilon the chain records for the run (max over devices, all their jobs on '{FL_DATASET}'): "
        f"{job.epsilon_spent:.4f}"
    )


def main() -> None:
    began = time.monotonic()
    data_dir = Path(os.environ.get("FEDGE_DATA_DIR", ".fedge")).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    token = admin_token(data_dir)
    port = free_port()
    console.rule("[bold]fedge demo[/bold] (embedded defaults)")
    console.print(f"data directory: {data_dir}")
    broker_port = free_port()
    repoint_agents(data_dir / "agents", broker_port)
    proc = start_controller(data_dir, token, port, broker_port)
    url = f"http://127.0.0.1:{port}"
    console.print(f"controller: {url}  (OpenAPI: {url}/docs)")
    try:
        with FedgeClient(url, token) as fc:
            earlier = fc.list_datasets(limit=500)
            console.print(f"datasets registered by earlier runs: [bold]{earlier.total}[/bold]")
            for d in earlier.items[:5]:
                console.print(
                    f"  {d.dataset_id}  {d.name}  sha256 {d.sha256}  ({d.created_at:%Y-%m-%d %H:%M:%S})"
                )

            payload, dims = digits_npz()
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "digits.npz"
                path.write_bytes(payload)
                ds = fc.push_dataset(
                    path,
                    {
                        "organization_id": "org-demo",
                        "samples_dimension": dims,
                        "name": "sklearn-digits",
                        "description": "scikit-learn digits, 1797 samples, pixels scaled to [0,1]",
                    },
                )
            meta = fc.dataset_metadata(ds.dataset_id)
            with tempfile.TemporaryDirectory() as tmp:
                package = example_package(Path(tmp), "digits_cnn")
                model = fc.register_model_with_package(
                    {
                        "name": "digits-cnn",
                        "model_params": {"developer_id": "dev-demo", "organization_id": "org-demo"},
                        "data_params": {"dataset_id": ds.dataset_id},
                        "training": {
                            "kind": "python",
                            "entrypoint": "examples.digits_cnn.train",
                            "framework": "pytorch",
                            "hyperparameters": {"epochs": 8, "seed": 0},
                        },
                    },
                    package,
                )
            console.print(
                f"model {model.model_id} registered; training package sha256 {model.training_digest}"
            )
            job = train_with_progress(fc, model.model_id)
            if job.status != "succeeded":
                raise SystemExit(f"training failed: {job.error}")
            model_meta = fc.model_metadata(model.model_id)
            console.print("translating to ONNX (validated against PyTorch on 1,000 held-out samples)...")
            translation = fc.translate(model.model_id, quantize=True)
            ds_prov = fc.dataset_provenance(ds.dataset_id)
            registry = fc.contract(str(meta.chain_address))

        table = Table("what", title="registered now")
        table.add_column("value", overflow="fold")
        table.add_row("dataset_id", ds.dataset_id)
        table.add_row("dataset sha256", ds.sha256)
        table.add_row("dataset md5 (seed parity)", ds.md5)
        table.add_row("dataset size", f"{ds.size_bytes} bytes")
        table.add_row("stored at", str(data_dir / "objects" / meta.bucket / meta.object_key))
        table.add_row("original filename", str(meta.filename))
        table.add_row("registry contract", f"{registry['address']} (signed by {registry['controller']})")
        table.add_row("model_id", model.model_id)
        table.add_row("model status", model_meta.status)
        table.add_row("training digest (package)", model.training_digest)
        trained = model_meta.versions[0]
        table.add_row("trained version", f"v{trained.version} {trained.filename} sha256 {trained.sha256}")
        table.add_row("on-chain res_hash", str((model_meta.chain or {}).get("res_hash")))
        table.add_row("ONNX version", f"v{translation.version} sha256 {translation.sha256}")
        table.add_row(
            "accuracy PyTorch / ONNX",
            f"{translation.source_accuracy:.4f} / {translation.onnx_accuracy:.4f}",
        )
        table.add_row(
            "max |PyTorch - ONNX|", f"{translation.max_abs_diff:.2e} on {translation.n_samples} samples"
        )
        q = translation.quantized
        table.add_row(
            "int8 variant",
            f"{'kept as v' + str(q.version) if q and q.kept else 'dropped'}: {q.reason if q else None}",
        )
        table.add_row("metadata DB", str(data_dir / "fedge.db"))
        table.add_row("chain journal", str(data_dir / "chain"))
        console.print(table)
        console.rule("on-chain records (decoded)")
        console.print_json(data={"dataset": ds_prov.chain, "model": model_meta.chain})
        console.print(
            f"dataset provenance: stored object sha256 recomputed = chain record -> "
            f"[bold]{'verified' if ds_prov.verified else 'MISMATCH'}[/bold]"
        )
        with FedgeClient(url, token) as fc:
            agents = deploy_to_agents(fc, url, token, data_dir, model.model_id, translation)
            federated_learning(fc, data_dir, ds.dataset_id, agents)
        from demo_streaming import streaming  # scripts/ is on the path: this file runs as a script

        streaming(url, token, data_dir)
        console.print(
            f"[green]done[/green] in {time.monotonic() - began:.0f} s: {earlier.total + 1} datasets now "
            "registered; run `make demo` again to see this run's dataset listed from the persisted store "
            "(and the same agents move to the new model and train again, their privacy ledgers counting on)."
        )
    finally:
        proc.terminate()
        proc.wait(15)


if __name__ == "__main__":
    main()
