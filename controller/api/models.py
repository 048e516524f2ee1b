"""Models: registration (seed multipart form or JSON), metadata, versions, artifact upload/download."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from controller.api.deps import ArtifactWriter, Developer, Offset, RegistryDep, RegistryReader, SettingsDep
from controller.api.downloads import artifact_response
from controller.api.uploads import body_part, is_multipart, multipart_parts, parse_json_field
from controller.db.models import Model, ModelVersion
from controller.errors import Forbidden, Unprocessable, UnsupportedMediaType
from controller.registry.intake import ARTIFACT_FORM, MODEL_FORM
from controller.registry.schemas import (
    ArtifactStored,
    DataParams,
    ModelCreated,
    ModelMetadata,
    ModelOut,
    ModelParams,
    ModelProvenance,
    Page,
    Provenance,
    VersionOut,
)
from controller.registry.upload import UploadLimits
from controller.security.principal import Role

router = APIRouter(prefix="/v1/models", tags=["models"])

_REGISTER_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": ModelMetadata.model_json_schema(ref_template="#/components/schemas/{model}")
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["metadata"],
                    "properties": {
                        "metadata": {"type": "string", "description": "ModelMetadata as a JSON string"},
                        "train_image": {"type": "string", "description": "container image (seed form)"},
                        "training_package": {
                            "type": "string",
                            "format": "binary",
                            "description": "python training code: .tar.gz / .zip directory archive or wheel",
                        },
                    },
                }
            },
        },
    }
}
_ARTIFACT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["artifact"],
                    "properties": {"artifact": {"type": "string", "format": "binary"}},
                }
            },
        },
    }
}


def version_out(v: ModelVersion) -> VersionOut:
    return VersionOut(
        version=v.version,
        kind=v.kind,
        format=v.format,
        filename=v.filename,
        content_type=v.content_type,
        size_bytes=v.size_bytes,
        sha256=v.sha256,
        md5=v.md5,
        object_key=v.object_key,
        source_version=v.source_version,
        created_by=v.created_by,
        created_at=v.created_at,
    )


def model_out(m: Model) -> ModelOut:
    return ModelOut(
        model_id=m.id,
        status=m.status,
        name=m.name,
        description=m.description,
        model_params=ModelParams(developer_id=m.developer_id, organization_id=m.organization_id),
        data_params=DataParams(dataset_id=m.dataset_id),
        training=m.training or {},
        training_digest=m.training_digest,
        chain_address=m.chain_address,
        created_by=m.created_by,
        created_at=m.created_at,
        versions=[version_out(v) for v in m.versions if v.status == "ready"],
    )


@router.post("", status_code=201, response_model=ModelCreated, openapi_extra=_REGISTER_BODY)
async def register_model(
    request: Request, registry: RegistryDep, settings: SettingsDep, caller: Developer
) -> ModelCreated:
    """Register a model for a dataset with how to train it. Accepts the seed's multipart form
    (``metadata`` JSON string, optional ``train_image`` or ``training_package`` file, fields first) or
    the same metadata as a JSON body."""
    if is_multipart(request):
        limits = UploadLimits(settings.max_upload_bytes, settings.max_metadata_bytes)
        parts = multipart_parts(request, MODEL_FORM, limits)
        model = await registry.intake.model(parts, limits, created_by=caller.subject)
    elif request.headers.get("content-type", "").startswith("application/json"):
        body = await request.body()
        if len(body) > settings.max_metadata_bytes:
            raise Unprocessable("metadata too large", field="body")
        meta = parse_json_field(body.decode("utf-8", "replace"), ModelMetadata, "body")
        model = await run_in_threadpool(registry.intake.register_model, meta, caller.subject)
    else:
        raise UnsupportedMediaType("send application/json or multipart/form-data")
    return ModelCreated(model_id=model.id, status=model.status, training_digest=model.training_digest)


@router.get("", response_model=Page[ModelOut])
def list_models(
    registry: RegistryDep,
    _caller: RegistryReader,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Offset = 0,
    dataset_id: str | None = None,
) -> Page[ModelOut]:
    """Registered models, newest first."""
    rows, total = registry.list_models(limit, offset, dataset_id)
    return Page[ModelOut](items=[model_out(m) for m in rows], total=total, limit=limit, offset=offset)


@router.get(
    "/{model_id}",
    response_class=Response,
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "the trained artifact"},
        409: {"description": "the model has not been trained yet"},
    },
)
def download_model(
    model_id: str,
    request: Request,
    registry: RegistryDep,
    _caller: RegistryReader,
    version: Annotated[int | None, Query(ge=1)] = None,
    kind: Annotated[str | None, Query(pattern="^(trained|onnx|quantized)$")] = None,
) -> Response:
    """The newest trained artifact (or ``version`` / newest of ``kind``); 409 if not trained yet."""
    mv = registry.resolve_version(model_id, version, kind)
    assert mv.sha256
    chain_sha, _ = registry.chain_version_hash(mv)
    return artifact_response(
        request,
        lambda: registry.verified_chunks(
            mv.bucket, mv.object_key, chain_sha, f"model {model_id} v{mv.version}"
        ),
        sha256=mv.sha256,
        md5=mv.md5,
        size=mv.size_bytes,
        filename=mv.filename,
        content_type=mv.content_type,
        extra_headers={"X-Model-Version": str(mv.version), "X-Model-Kind": mv.kind},
    )


@router.get("/{model_id}/metadata", response_model=ModelOut)
def model_metadata(model_id: str, registry: RegistryDep, _caller: RegistryReader) -> ModelOut:
    """Model metadata, training spec and digest, its ready versions with their hashes, and the
    on-chain record (``train_image_hash``, ``res_hash`` once verified)."""
    out = model_out(registry.get_model(model_id))
    out.chain = registry.chain_model_record(model_id)
    return out


@router.get("/{model_id}/provenance", response_model=ModelProvenance)
def model_provenance(model_id: str, registry: RegistryDep, _caller: RegistryReader) -> ModelProvenance:
    """Recompute every version's SHA-256 and compare with its chain record (verify or artifact)."""
    model = registry.get_model(model_id)
    checks = []
    for mv in registry.ready_versions(model):
        chain_sha, record = registry.chain_version_hash(mv)
        actual = registry.recompute(mv.bucket, mv.object_key)
        recomputed = actual.sha256 if actual else None
        checks.append(
            Provenance(
                subject=f"model {model_id} v{mv.version} ({mv.kind})",
                sha256_recorded=mv.sha256,
                sha256_recomputed=recomputed,
                sha256_chain=chain_sha,
                verified=recomputed is not None and recomputed == chain_sha == mv.sha256,
                record=record,
            )
        )
    chain = registry.chain_model_record(model_id)
    return ModelProvenance(
        model_id=model_id,
        chain=chain,
        verified=chain is not None and all(c.verified for c in checks),
        versions=checks,
    )


@router.get("/{model_id}/versions", response_model=list[VersionOut])
def model_versions(model_id: str, registry: RegistryDep, _caller: RegistryReader) -> list[VersionOut]:
    """All ready versions of the model."""
    return [version_out(v) for v in registry.ready_versions(registry.get_model(model_id))]


@router.put(
    "/{model_id}/artifact", status_code=201, response_model=ArtifactStored, openapi_extra=_ARTIFACT_BODY
)
async def store_artifact(
    model_id: str,
    request: Request,
    registry: RegistryDep,
    settings: SettingsDep,
    caller: ArtifactWriter,
    kind: Annotated[str, Query(pattern="^(trained|onnx|quantized)$")] = "trained",
    format: Annotated[str | None, Query(max_length=32, pattern=r"^[A-Za-z0-9._-]+$")] = None,
    filename: Annotated[str | None, Query(max_length=255)] = None,
    source_version: Annotated[int | None, Query(ge=1)] = None,
) -> ArtifactStored:
    """Store a training (or translation) result as a new model version. Only the model's own job
    credential or an admin may call it. Body: raw bytes, or multipart with an ``artifact`` file."""
    if caller.role is Role.JOB and caller.model_id != model_id:
        raise Forbidden(f"this job credential may only write model {caller.model_id}")
    limits = UploadLimits(settings.max_upload_bytes, settings.max_metadata_bytes)
    read = multipart_parts if is_multipart(request) else body_part
    row = await registry.intake.version(
        model_id,
        read(request, ARTIFACT_FORM, limits),
        limits,
        kind=kind,
        created_by=caller.subject,
        fmt=format,
        source_version=source_version,
        filename=filename,
    )
    assert row.sha256 and row.md5 and row.size_bytes is not None
    return ArtifactStored(
        model_id=model_id,
        version=row.version,
        kind=row.kind,
        sha256=row.sha256,
        md5=row.md5,
        size_bytes=row.size_bytes,
        status="trained" if row.kind == "trained" else "ready",
    )
