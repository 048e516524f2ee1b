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
            model = fc.register_model(
                {
                    "name": "digits-cnn",
                    "model_params": {"developer_id": "dev-demo", "organization_id": "org-demo"},
                    "data_params": {"dataset_id": ds.dataset_id},
                    "training": {
                        "kind": "python",
                        "entrypoint": "examples.digits_cnn.train:main",
                        "framework": "pytorch",
                    },
                }
            )
            model_meta = fc.model_metadata(model.model_id)
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
        table.add_row("training digest", model.training_digest)
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
