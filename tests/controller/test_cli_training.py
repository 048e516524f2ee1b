"""`fedge models register-package / train / translate / pull` and `fedge jobs` against a live controller."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import LiveServer, fedge_cli

REPO = Path(__file__).resolve().parents[2]


def _fedge(live: LiveServer, *args: str) -> subprocess.CompletedProcess[str]:
    return fedge_cli(live, *args, timeout=300)


def test_register_train_translate_pull_with_the_cli(live: LiveServer, tmp_path: Path) -> None:
    npz = tmp_path / "digits.npz"
    subprocess.run([sys.executable, str(REPO / "examples" / "make_digits_npz.py"), str(npz)], check=True)
    pushed = _fedge(live, "datasets", "push", str(npz), "--org", "o", "--dims", "(1,8,8)", "--json")
    dataset_id = json.loads(pushed.stdout)["dataset_id"]
    reg = _fedge(
        live, "models", "register-package", str(REPO / "examples" / "digits_sklearn"), "--dataset", dataset_id,
        "--developer", "d", "--org", "o", "--entrypoint", "digits_sklearn.train", "--framework", "sklearn", "--json",
    )  # fmt: skip
    assert reg.returncode == 0, reg.stderr
    model_id = json.loads(reg.stdout)["model_id"]

    train = _fedge(live, "models", "train", model_id)
    assert train.returncode == 0, train.stderr
    assert "succeeded" in train.stderr and "version 1" in train.stderr

    listed = _fedge(live, "jobs", "list", "--model", model_id)
    assert "succeeded" in listed.stdout
    job_id = live.state.jobs.list_jobs(model_id, 1, 0)[0].id  # type: ignore[union-attr]
    logs = _fedge(live, "jobs", "logs", job_id)
    assert "verified against chain" in logs.stdout

    translated = _fedge(live, "models", "translate", model_id, "--json")
    assert translated.returncode == 0, translated.stderr
    result = json.loads(translated.stdout)
    assert result["max_abs_diff"] <= 1e-4

    out = tmp_path / "model.onnx"
    pulled = _fedge(live, "models", "pull", model_id, "--format", "onnx", "-o", str(out))
    assert pulled.returncode == 0, pulled.stderr
    assert hashlib.sha256(out.read_bytes()).hexdigest() == result["sha256"]
    assert "chain record matches" in pulled.stderr


def test_jobs_watch_exits_1_on_a_failed_job(live: LiveServer, tmp_path: Path) -> None:
    bad = tmp_path / "broken"
    bad.mkdir()
    (bad / "__init__.py").write_text("")
    (bad / "train.py").write_text("raise SystemExit('no GPU found, giving up')\n")
    npz = tmp_path / "d.npz"
    npz.write_bytes(b"not really a dataset")
    dataset_id = json.loads(
        _fedge(live, "datasets", "push", str(npz), "--org", "o", "--dims", "(1)", "--json").stdout
    )["dataset_id"]
    reg = _fedge(
        live, "models", "register-package", str(bad), "--dataset", dataset_id, "--developer", "d", "--org", "o",
        "--entrypoint", "broken.train", "--json",
    )  # fmt: skip
    model_id = json.loads(reg.stdout)["model_id"]
    train = _fedge(live, "models", "train", model_id)
    assert train.returncode == 1
    assert "failed" in train.stderr
    assert "no GPU found, giving up" in train.stderr
