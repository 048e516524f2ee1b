"""fedge demo on embedded defaults (run by ``make demo``).

Starts the controller (SQLite + local artifact store + in-process EVM under ``FEDGE_DATA_DIR``, default
``./.fedge``), registers scikit-learn's digits as a dataset (.npz), registers a model for it, trains it in a
job, translates it to ONNX (validated, int8 variant), and prints ids, hashes and where everything is
stored. Then it enrolls three edge agents (in-process, ``simulator.fleet``; state under
``FEDGE_DATA_DIR/agents/``), deploys the ONNX model to them in two waves and measures each agent's accuracy
on the held-out digits through its local inference API. Data persists: a second run lists the first run's
datasets and reuses the agents enrolled by the first run (they move to the new model).
"""

from __future__ import annotations

import io
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from controller.client import FedgeAPIError, FedgeClient
from controller.schemas.jobs import TERMINAL_JOB_STATES, JobOut
from controller.schemas.translation import TranslateResult

console = Console()


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


def start_controller(data_dir: Path, token: str, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "FEDGE_DATA_DIR": str(data_dir), "FEDGE_ADMIN_TOKEN": token}
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
) -> None:
    """Enroll (or reuse) three agents, roll the ONNX model out in two waves, check them on held-out digits."""
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


def main() -> None:
    data_dir = Path(os.environ.get("FEDGE_DATA_DIR", ".fedge")).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    token = admin_token(data_dir)
    port = free_port()
    console.rule("[bold]fedge demo[/bold] (embedded defaults)")
    console.print(f"data directory: {data_dir}")
    proc = start_controller(data_dir, token, port)
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
            deploy_to_agents(fc, url, token, data_dir, model.model_id, translation)
        console.print(
            f"[green]done[/green]: {earlier.total + 1} datasets now registered; run `make demo` again to see "
            "this run's dataset listed from the persisted store (and the same agents move to the new model)."
        )
    finally:
        proc.terminate()
        proc.wait(15)


if __name__ == "__main__":
    main()
