"""Register a trained grid policy in the controller's registry, through the SDK like any model.

What ends up in the registry (every hash recorded on chain by the controller):

* a **dataset**: the grid's training-day injections (``--dataset`` names an existing one instead), stored
  as one ``.npy`` array ``(days, 96, loads p | loads q | pv p)`` in MW / Mvar; registered once and reused
  (found by its SHA-256);
* a **model** referencing it, with a python training spec that names the RL backend and carries the
  policy's settings (``framework: fedge-grid-policy``);
* version 1, ``trained``: the backend's file (``model.zip``), when the folder has it;
* the next version, ``onnx``: ``policy.onnx`` with ``policy.json`` embedded in its ``metadata_props``
  (:mod:`simulator.grid.onnx_policy`), which is what the controller checks before it starts a grid run and
  what the agent runs.
"""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from simulator.grid.errors import PolicyError
from simulator.grid.onnx_policy import METADATA_KEY, embed_policy_info, embedded_policy_info
from simulator.grid.policy_info import ONNX_FILE, PolicyInfo

if TYPE_CHECKING:
    from controller.client import FedgeClient
    from simulator.grid.model import GridModel

FRAMEWORK = "fedge-grid-policy"
"""``training.framework`` of a registered grid policy (informative; the ONNX metadata is what counts)."""
DATASET_NAME = "uc9-grid-training-days"


@dataclass(frozen=True)
class RegisteredPolicy:
    model_id: str
    dataset_id: str
    trained_version: int | None
    onnx_version: int
    sha256: str


def self_describing_onnx(directory: Path) -> tuple[Path, PolicyInfo]:
    """``policy.onnx`` of a policy folder with ``policy.json`` embedded (added in place when missing)."""
    info = PolicyInfo.read(directory)
    path = directory / ONNX_FILE
    if not path.is_file():
        raise PolicyError(f"{directory} has no {ONNX_FILE}; run 'fedge grid export --policy {directory}'")
    embedded = embedded_policy_info(path)
    if embedded is None:
        embed_policy_info(path, info)
    elif embedded != info:
        raise PolicyError(
            f"{path} embeds a different policy description ({METADATA_KEY}) than {directory}/policy.json; "
            f"re-export it with 'fedge grid export --policy {directory}'"
        )
    return path, info


def training_days_array(model: GridModel) -> tuple[bytes, dict[str, Any]]:
    """The training days' injections as ``.npy`` bytes (deterministic) and a description of the columns."""
    days = model.train_days()
    rows = []
    for day in days:
        inj = model.day(day)
        rows.append(np.concatenate([inj.p_load, inj.q_load, inj.p_pv], axis=1))
    array = np.asarray(rows, dtype=np.float32)
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    names = [ld.name for ld in model.spec.loads]
    describe = {
        "grid": model.spec.name,
        "days": list(days),
        "columns": [f"{n}.p_mw" for n in names]
        + [f"{n}.q_mvar" for n in names]
        + [f"{p.name}.p_mw" for p in model.spec.pv],
        "source": "SimBench 1-complete_data-mixed-all-2-sw profiles, 2016, 15-minute slots",
        "shape": list(array.shape),
    }
    return buffer.getvalue(), describe


def _dataset(client: FedgeClient, model: GridModel, organization_id: str) -> str:
    data, describe = training_days_array(model)
    sha = hashlib.sha256(data).hexdigest()
    offset = 0
    while True:
        page = client.list_datasets(limit=500, offset=offset)
        for ds in page.items:
            if ds.sha256 == sha and ds.organization_id == organization_id:
                return ds.dataset_id
        offset += len(page.items)
        if not page.items or offset >= page.total:
            break
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{DATASET_NAME}.npy"
        path.write_bytes(data)
        created = client.push_dataset(
            path,
            {
                "organization_id": organization_id,
                "samples_dimension": "(" + ",".join(str(n) for n in describe["shape"][1:]) + ")",
                "name": DATASET_NAME,
                "description": "injections of the grid simulator's training days (loads p, q; PV p)",
                **describe,
            },
        )
    return created.dataset_id


def register_policy(
    client: FedgeClient,
    directory: Path,
    *,
    name: str | None = None,
    dataset_id: str | None = None,
    organization_id: str = "fedge",
    developer_id: str = "grid",
    model: GridModel | None = None,
) -> RegisteredPolicy:
    """Register the policy folder as a model with a trained (``model.zip``) and an ONNX version."""
    directory = Path(directory)
    onnx_path, info = self_describing_onnx(directory)
    if dataset_id is None:
        if model is None:
            from simulator.grid.model import GridModel

            model = GridModel()
        if model.spec.name != info.grid:
            raise PolicyError(f"the policy was trained on grid {info.grid!r}, not {model.spec.name!r}")
        dataset_id = _dataset(client, model, organization_id)
    settings = {k: v for k, v in asdict(info).items() if k not in ("validation", "train_seconds")}
    metadata = {
        "name": name or f"grid-policy-{info.backend}-{info.algorithm}",
        "description": f"UC9 load-shifting policy ({info.backend} {info.algorithm}, {info.action_kind} "
        f"actions, {info.actions_per_day} shifts/day); policy.json embedded in the ONNX ({METADATA_KEY})",
        "model_params": {"developer_id": developer_id, "organization_id": organization_id},
        "data_params": {"dataset_id": dataset_id},
        "training": {
            "kind": "python",
            "entrypoint": f"simulator.grid.rl:{info.backend}",
            "framework": FRAMEWORK,
            "hyperparameters": json.loads(json.dumps(settings)),
        },
    }
    created = client.register_model(metadata)
    trained_version: int | None = None
    backend_file = directory / "model.zip"
    if backend_file.is_file():
        trained = client.put_artifact(created.model_id, backend_file, kind="trained", fmt=info.backend)
        trained_version = trained.version
    stored = client.put_artifact(
        created.model_id, onnx_path, kind="onnx", fmt="onnx", source_version=trained_version
    )
    return RegisteredPolicy(created.model_id, dataset_id, trained_version, stored.version, stored.sha256)
