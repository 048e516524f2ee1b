"""Drift reference data sets of deployments: a registered data set named by a deployment
(``reference_dataset_id``) and, through each target's desired state, by the device's signed document
(``model.reference``: the SHA-256 *from the dataset's chain record* and the device route to fetch it)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from controller.errors import Conflict, Unprocessable
from fedge_protocol import DatasetReference, paths

if TYPE_CHECKING:
    from controller.db.models import Dataset
    from controller.registry.service import Registry


def check_reference(registry: Registry, dataset_id: str) -> Dataset:
    """The data set a deployment names as its drift reference: registered, ready and on chain (422 for
    an unknown one, 409 while it is not usable)."""
    from controller.errors import NotFound

    try:
        ds = registry.get_dataset(dataset_id)
    except NotFound as exc:
        raise Unprocessable(f"dataset {dataset_id} is not registered", field="reference_dataset_id") from exc
    sha, _ = registry.chain_dataset_hash(ds)
    if sha is None:
        raise Conflict(f"dataset {dataset_id} has no chain record; cannot use it as a drift reference")
    return ds


def reference_for(registry: Registry, device_id: str, dataset_id: str) -> DatasetReference:
    """The reference as a device's desired state names it (hash read from the chain)."""
    ds = check_reference(registry, dataset_id)
    sha, _ = registry.chain_dataset_hash(ds)
    assert sha is not None
    return DatasetReference(
        dataset_id=ds.id,
        sha256=sha,
        size_bytes=ds.size_bytes,
        filename=ds.filename,
        download=paths.DATASET_DOWNLOAD.format(device_id=device_id, dataset_id=ds.id),
    )
