"""Datasets: streamed multipart upload (``dataset`` file + ``metadata`` JSON), listing, download."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from controller.api.deps import Developer, Offset, RegistryDep, RegistryReader, SettingsDep
from controller.api.downloads import artifact_response
from controller.api.uploads import multipart_parts
from controller.db.models import Dataset
from controller.registry.intake import DATASET_FORM
from controller.registry.schemas import DatasetCreated, DatasetOut, Page, Provenance
from controller.registry.upload import UploadLimits

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])

_UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["dataset", "metadata"],
                    "properties": {
                        "metadata": {
                            "type": "string",
                            "description": "JSON: organization_id, samples_dimension, name?, description? "
                            "(send it before the file)",
                            "example": '{"organization_id": "org-1", "samples_dimension": "(1,8,8)"}',
                        },
                        "dataset": {"type": "string", "format": "binary", "description": "the dataset file"},
                    },
                }
            }
        },
    }
}


def dataset_out(ds: Dataset) -> DatasetOut:
    return DatasetOut(
        dataset_id=ds.id,
        name=ds.name,
        description=ds.description,
        organization_id=ds.organization_id,
        samples_dimension=ds.samples_dimension,
        extra=ds.extra or {},
        filename=ds.filename,
        content_type=ds.content_type,
        size_bytes=ds.size_bytes,
        sha256=ds.sha256,
        md5=ds.md5,
        bucket=ds.bucket,
        object_key=ds.object_key,
        chain_address=ds.chain_address,
        created_by=ds.created_by,
        created_at=ds.created_at,
    )


@router.post("", status_code=201, response_model=DatasetCreated, openapi_extra=_UPLOAD_BODY)
async def register_dataset(
    request: Request, registry: RegistryDep, settings: SettingsDep, caller: Developer
) -> DatasetCreated:
    """Register a dataset. The file is streamed to storage and hashed (SHA-256 and MD5) on the way;
    oversize uploads get 413 and leave nothing behind. Send ``metadata`` before the file: a bad one is
    refused before a byte of the file is stored."""
    limits = UploadLimits(settings.max_upload_bytes, settings.max_metadata_bytes)
    parts = multipart_parts(request, DATASET_FORM, limits)
    row = await registry.intake.dataset(parts, limits, created_by=caller.subject)
    assert row.sha256 and row.md5 and row.size_bytes is not None
    return DatasetCreated(dataset_id=row.id, sha256=row.sha256, md5=row.md5, size_bytes=row.size_bytes)


@router.get("", response_model=Page[DatasetOut])
def list_datasets(
    registry: RegistryDep,
    _caller: RegistryReader,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Offset = 0,
    organization_id: str | None = None,
) -> Page[DatasetOut]:
    """Registered datasets, newest first."""
    rows, total = registry.list_datasets(limit, offset, organization_id)
    return Page[DatasetOut](items=[dataset_out(r) for r in rows], total=total, limit=limit, offset=offset)


@router.get(
    "/{dataset_id}",
    responses={200: {"content": {"application/octet-stream": {}}, "description": "the dataset bytes"}},
    response_class=Response,
)
def download_dataset(
    dataset_id: str, request: Request, registry: RegistryDep, _caller: RegistryReader
) -> Response:
    """Download the dataset, streamed, with ``ETag``/``Digest`` headers (SHA-256). The stored object is
    checked against its chain record first: 409 "integrity check failed" if it was changed in storage."""
    ds = registry.get_dataset(dataset_id)
    assert ds.sha256
    chain_sha, _ = registry.chain_dataset_hash(ds)
    return artifact_response(
        request,
        lambda: registry.verified_chunks(ds.bucket, ds.object_key, chain_sha, f"dataset {ds.id}"),
        sha256=ds.sha256,
        md5=ds.md5,
        size=ds.size_bytes,
        filename=ds.filename,
        content_type=ds.content_type,
    )


@router.get("/{dataset_id}/provenance", response_model=Provenance)
def dataset_provenance(dataset_id: str, registry: RegistryDep, _caller: RegistryReader) -> Provenance:
    """Recompute the stored object's SHA-256 and compare it with the chain record."""
    ds = registry.get_dataset(dataset_id)
    chain_sha, record = registry.chain_dataset_hash(ds)
    actual = registry.recompute(ds.bucket, ds.object_key)
    recomputed = actual.sha256 if actual else None
    return Provenance(
        subject=f"dataset {ds.id}",
        sha256_recorded=ds.sha256,
        sha256_recomputed=recomputed,
        sha256_chain=chain_sha,
        verified=recomputed is not None and recomputed == chain_sha == ds.sha256,
        chain=record,
    )


@router.get("/{dataset_id}/metadata", response_model=DatasetOut)
def dataset_metadata(dataset_id: str, registry: RegistryDep, _caller: RegistryReader) -> DatasetOut:
    """The dataset's metadata (original filename and type, hashes, owner, where it is stored)."""
    return dataset_out(registry.get_dataset(dataset_id))
