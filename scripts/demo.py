"""fedge demo on embedded defaults (run by ``make demo``).

Starts the controller (SQLite + local artifact store + in-process EVM under ``FEDGE_DATA_DIR``, default
``./.fedge``), registers scikit-learn's digits as a dataset (.npz), registers a model for it, and prints
ids, hashes and where everything is stored. Data persists: a second run lists the first run's datasets.
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

from controller.client import FedgeClient

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


def train_with_progress(fc: FedgeClient, model_id: str) -> dict[str, object]:
    """Start the training job and show its progress and metrics until it ends."""
    from rich.progress import BarColumn, Progress

    job_id = fc.train(model_id)["job_id"]
    with Progress(
        "training", BarColumn(), "{task.percentage:>3.0f}%", "{task.fields[info]}", console=console
    ) as bar:
        task = bar.add_task("train", total=1.0, info="queued")
        while True:
            job = fc.job(job_id)
            m = job["metrics"]
            info = job["status"]
            if "holdout_accuracy" in m:
                info += f"  epoch {m.get('epoch')}  loss {m.get('loss', 0):.3f}"
                info += f"  holdout acc {m['holdout_accuracy']:.3f}"
            bar.update(task, completed=job["progress"] or 0.0, info=info)
            if job["status"] in ("succeeded", "failed", "cancelled"):
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
            if job["status"] != "succeeded":
                raise SystemExit(f"training failed: {job['error']}")
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
        table.add_row("ONNX version", f"v{translation['version']} sha256 {translation['sha256']}")
        table.add_row(
            "accuracy PyTorch / ONNX",
            f"{translation['source_accuracy']:.4f} / {translation['onnx_accuracy']:.4f}",
        )
        table.add_row(
            "max |PyTorch - ONNX|", f"{translation['max_abs_diff']:.2e} on {translation['n_samples']} samples"
        )
        q = translation.get("quantized") or {}
        table.add_row(
            "int8 variant",
            f"{'kept as v' + str(q.get('version')) if q.get('kept') else 'dropped'}: {q.get('reason')}",
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
        console.print(
            f"[green]done[/green]: {earlier.total + 1} datasets now registered; run `make demo` again to see "
            "this run's dataset listed from the persisted store."
        )
    finally:
        proc.terminate()
        proc.wait(15)


if __name__ == "__main__":
    main()
