"""A device's model download from S3: presigned (the controller answers 307, the device fetches from
SeaweedFS itself) vs proxied through the controller (integrity-checked, streamed) vs raw ``minio``
``get_object``, all three writing a file and hashing it with SHA-256 as the device does.

One SeaweedFS (``weed mini``), two controllers on it (``FEDGE_S3_PRESIGNED_DOWNLOADS`` true / false), one
enrolled device each; the artifact is an ONNX model padded with an N-byte initializer (64 MiB; 16 MiB with
``--quick``), deployed to the device so it may download it. ``ControllerLink.download`` is the agent's own
download (it follows the 307). Best of ``--repeat``. Goal ([scale]): presigned >= 0.8x raw minio.
Ends with one JSON line.

    python bench/device_download.py [--quick] [--repeat 3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import sys
import tempfile
import time
import uuid
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import numpy as np
from minio import Minio
from onnx import TensorProto, helper, numpy_helper

from bench._services import RunningS3, live_controller, run_seaweedfs
from controller.config import ControllerSettings
from controller.state import build_state
from edge_agent.identity import enroll
from edge_agent.link.client import ControllerLink
from fedge_protocol import paths

MIB = 1024 * 1024


def padded_model(size: int) -> bytes:
    """y = x + 1 on float[1, 4], with an unused float32 initializer of ``size`` bytes (random)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    c = helper.make_tensor("c", TensorProto.FLOAT, [1], [1.0])
    pad = numpy_helper.from_array(np.random.default_rng(0).random(size // 4, dtype=np.float32), "pad")
    graph = helper.make_graph([helper.make_node("Add", ["x", "c"], ["y"])], "padded", [x], [y], [c, pad])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def _device(url: str, admin: str, data: bytes, state_dir: Path) -> tuple[ControllerLink, str]:
    """Register ``data`` as a model version, enroll a device, deploy to it; (its link, download path)."""
    hdr = {"Authorization": f"Bearer {admin}"}
    with httpx.Client(base_url=url, timeout=600) as http:
        ds = http.post(
            "/v1/datasets",
            headers=hdr,
            files={"dataset": ("d.npz", b"data", "application/octet-stream")},
            data={"metadata": json.dumps({"organization_id": "org-b", "samples_dimension": "(4,)"})},
        )
        ds.raise_for_status()
        body = {
            "model_params": {"developer_id": "dev-b", "organization_id": "org-b"},
            "data_params": {"dataset_id": ds.json()["dataset_id"]},
        }
        m = http.post("/v1/models", headers=hdr, json=body)
        m.raise_for_status()
        model_id = m.json()["model_id"]
        v = http.put(f"/v1/models/{model_id}/artifact?kind=onnx&filename=m.onnx", headers=hdr, content=data)
        v.raise_for_status()
        version = int(v.json()["version"])
        tok = http.post("/v1/enrollment-tokens", headers=hdr, json={"labels": {}, "ttl_seconds": 600})
        tok.raise_for_status()
        identity = enroll(url, tok.json()["token"], state_dir, facts={"cpu_count": 1})
        d = http.post(
            "/v1/deployments",
            headers=hdr,
            json={"model_id": model_id, "version": version, "device_ids": [identity.device_id]},
        )
        d.raise_for_status()
    link = ControllerLink(identity, timeout=600)
    return link, paths.MODEL_DOWNLOAD.format(device_id=identity.device_id, model_id=model_id, version=version)


def _raw_get(client: Minio, bucket: str, key: str, dest: Path) -> str:
    digest = hashlib.sha256()
    resp = client.get_object(bucket, key)
    try:
        with open(dest, "wb") as fh:
            for chunk in resp.stream(1 << 16):
                digest.update(chunk)
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())  # as the device does
    finally:
        resp.close()
        resp.release_conn()
    return digest.hexdigest()


def _best(fn, repeat: int) -> tuple[float, str]:  # type: ignore[no-untyped-def]
    times, out = [], ""
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def run(tmp: Path, size: int, repeat: int) -> dict[str, object]:
    data = padded_model(size)
    expected = hashlib.sha256(data).hexdigest()
    (tmp / "s3").mkdir()
    with run_seaweedfs(tmp / "s3") as s3:
        return _against(tmp, s3, data, expected, repeat)


def _against(tmp: Path, s3: RunningS3, data: bytes, expected: str, repeat: int) -> dict[str, object]:
    info = s3.server
    raw = Minio(info.endpoint, access_key=info.access_key, secret_key=info.secret_key, secure=False)
    raw.make_bucket("bench-raw")
    import io

    raw.put_object("bench-raw", "object", io.BytesIO(data), len(data))
    results: dict[str, float] = {}
    t_raw, got = _best(lambda: _raw_get(raw, "bench-raw", "object", tmp / "raw.bin"), repeat)
    assert got == expected, "raw download has another SHA-256"
    results["raw"] = t_raw
    for presign in (True, False):
        admin = f"fedge_bench-{secrets.token_hex(16)}"
        name = "presigned" if presign else "proxied"
        settings = ControllerSettings(
            data_dir=tmp / f"ctl-{name}",
            admin_token=admin,
            **info.controller_settings(f"b{uuid.uuid4().hex[:8]}-"),
            s3_presigned_downloads=presign,
            _env_file=None,  # type: ignore[call-arg]
        )
        state = build_state(settings, start_jobs=False)
        try:
            with live_controller(state) as url:
                link, path = _device(url, admin, data, tmp / f"agent-{name}")
                dest = tmp / f"{name}.bin"
                probe = link.http.get(path)
                assert probe.status_code == (307 if presign else 200), probe.status_code
                t, got = _best(lambda: link.download(path, dest), repeat)  # noqa: B023
                assert got == expected, f"{name} download has another SHA-256"
                results[name] = t
                link.close()
        finally:
            state.close()
    mb = len(data) / MIB
    mbps = {k: mb / v for k, v in results.items()}
    print(
        f"\nDevice download of a {mb:.0f} MiB model from SeaweedFS S3 (best of {repeat}, SHA-256 to a file)"
    )
    for k in ("raw", "presigned", "proxied"):
        print(f"  {k:<10} {mbps[k]:8.1f} MB/s   {mbps[k] / mbps['raw']:.2f}x raw minio")
    return {
        "bench": "device_download",
        "size_mib": round(mb, 1),
        "raw_mbps": round(mbps["raw"], 1),
        "presigned_mbps": round(mbps["presigned"], 1),
        "proxied_mbps": round(mbps["proxied"], 1),
        "presigned_ratio": round(mbps["presigned"] / mbps["raw"], 3),
        "proxied_ratio": round(mbps["proxied"] / mbps["raw"], 3),
        "goal_presigned_ratio": 0.8,
        "goal_met": mbps["presigned"] / mbps["raw"] >= 0.8,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="16 MiB instead of 64 MiB")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    size = (16 if args.quick else 64) * MIB
    with tempfile.TemporaryDirectory(prefix="fedge-bench-dl-") as tmp:
        summary = run(Path(tmp), size, args.repeat)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
