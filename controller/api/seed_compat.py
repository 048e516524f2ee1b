"""The seed's REST calls as written (D3.4 section 4.3, tables 10-17): its paths, methods, bodies and answer
shapes, served by fedge's own services with only the base URL and a bearer token added.

This router only translates: requests become the native ``/v1`` calls (the same Registry intake with its
streamed SHA-256, chain records and precise 422 problems; the same JobManager; the same translation) and
answers are cut to the seed's shapes. Differences it absorbs:

- the seed's paths are singular and unversioned (``/dataset``, ``/model``, ``/contract``, ``/translate``,
  ``/train``); each also answers with a trailing slash (the seed posts to ``/model/``), without a redirect;
- the seed's model ``metadata`` is not strict JSON (a trailing comma, section 4.3) and uses
  ``"model params"`` / ``"data params"``: trailing commas are dropped before the native validation;
- ``POST /model`` with ``train_image`` starts training, as the seed's does (a job, whose failure says why
  when this controller cannot run container images); fedge's python training package is accepted too
  (``training_package`` file + ``entrypoint`` field, optional ``hyperparameters`` JSON);
- ``GET /model/{id}`` of an untrained model answers the seed's sentence (a JSON string, 200); a model whose
  training failed answers a 409 problem naming the job and its error;
- ``GET /contract/{address}`` answers the seed's metadata; fedge keeps datasets and models in one registry
  contract keyed by id, so the "address" of a fedge asset is its id;
- ``POST /translate/{id}`` answers the ONNX model itself (fedge validates it against the source first).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool

from controller.api import jobs as jobs_api
from controller.api import models as models_api
from controller.api.datasets import download_dataset
from controller.api.deps import (
    Admin,
    ArtifactWriter,
    ChainDep,
    Developer,
    JobsDep,
    RegistryDep,
    RegistryReader,
    SettingsDep,
)
from controller.api.input_guard import forbidden_text
from controller.api.translation import translate_model
from controller.api.uploads import multipart_parts, parse_json_field
from controller.errors import Conflict, NotFound, Unprocessable
from controller.registry.chain_problems import map_chain_errors
from controller.registry.intake import ARTIFACT_FORM
from controller.registry.schemas import ArtifactStored, DatasetMetadata, ModelMetadata, TrainingSpec
from controller.registry.upload import FieldPart, UploadForm, UploadLimits, UploadPart
from controller.schemas.jobs import JobCreated
from controller.schemas.seed import (
    SeedDataParams,
    SeedDatasetContract,
    SeedDatasetCreated,
    SeedModelContract,
    SeedModelCreated,
    SeedModelParams,
)

TAG = "seed compatibility"
router = APIRouter(tags=[TAG])

JOB_HEADER = "X-Fedge-Job-Id"
_DATASET_FORM = UploadForm(file="dataset")  # metadata arrives as text: made strict JSON, then validated
_MODEL_FORM = UploadForm(file="training_package")
_FAILED = ("failed", "cancelled")


def not_trained_text(model_id: str) -> str:
    """The seed's answer to ``GET /model/{id}`` before training (section 4.3)."""
    return f"Model {model_id} has not been trained yet. Please, try again later."


def _route(method: Callable[..., Any], path: str, **kw: Any) -> Callable[[Callable[..., Any]], Any]:
    """Register ``path`` (documented) and ``path + "/"`` (hidden): the seed's trailing slash, no 307."""

    def register(fn: Callable[..., Any]) -> Any:
        method(path + "/", include_in_schema=False, **kw)(fn)
        return method(path, **kw)(fn)

    return register


# --------------------------------------------------------------------------------------- request bodies
def strict_json(text: str) -> str:
    """``text`` with the trailing commas before ``}`` / ``]`` removed (outside strings), as in the seed's
    model metadata; anything else is left for the JSON parser to judge."""
    out: list[str] = []
    in_string = escaped = False
    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
            out.append(ch)
            continue
        if ch == '"':
            in_string = True
        elif ch == ",":
            rest = text[i + 1 :].lstrip()
            if rest[:1] in ("}", "]"):
                continue
        out.append(ch)
    return "".join(out)


def _lenient(raw: str, schema: type[BaseModel], field: str) -> Any:
    try:
        json.loads(raw)
    except ValueError:
        raw = strict_json(raw)
    return parse_json_field(raw, schema, field)


class _SeedForm:
    """The seed's multipart parts as the native intake expects them: the small fields are collected,
    ``metadata`` made strict JSON and validated, and handed on before the file part when they came first
    (then a bad one stops the upload before a byte is stored), else after it (the seed's dataset call sends
    the file first; the intake removes the stored object when the metadata is refused)."""

    def __init__(self, parts: AsyncIterator[UploadPart], schema: type[BaseModel], model: bool) -> None:
        self._parts = parts
        self._schema = schema
        self._model = model

    async def __aiter__(self) -> AsyncIterator[UploadPart]:
        fields: dict[str, str] = {}
        flushed = file_seen = False
        async for part in self._parts:
            if isinstance(part, FieldPart):
                text = str(part.value)
                if found := forbidden_text(text, part.name):
                    raise Unprocessable(f"form field '{found[0]}' contains {found[1]}", field=found[0])
                if flushed:  # after the metadata was handed on: a plain field, judged by the intake
                    yield FieldPart(part.name, text)
                else:
                    fields[part.name] = text
                continue
            file_seen = True
            if not flushed and "metadata" in fields:  # validated before a byte of the file is stored
                flushed = True
                for ready in self._fields(fields, file_coming=True):
                    yield ready
            yield part
        if not flushed:  # metadata after the file (curl sends parts in the order given): judged now
            for ready in self._fields(fields, file_coming=file_seen):
                yield ready

    def _fields(self, fields: dict[str, str], *, file_coming: bool) -> list[FieldPart]:
        raw = fields.pop("metadata", None)
        if raw is None:
            raise Unprocessable("missing form field 'metadata'", field="metadata")
        meta = _lenient(raw, self._schema, "metadata")
        if self._model:
            assert isinstance(meta, ModelMetadata)
            meta = _training(meta, fields, file_coming=file_coming)
        return [FieldPart("metadata", meta), *(FieldPart(k, v) for k, v in fields.items())]


def _training(meta: ModelMetadata, fields: dict[str, str], *, file_coming: bool) -> ModelMetadata:
    """The seed's ``train_image`` (the native intake turns it into a container spec), or fedge's python
    package: ``entrypoint`` (+ ``hyperparameters`` JSON) fields become the python training spec."""
    entrypoint = fields.pop("entrypoint", None)
    hyper_raw = fields.pop("hyperparameters", None)
    if entrypoint is not None:
        if meta.training is not None:
            raise Unprocessable("give either 'entrypoint' or metadata.training, not both", field="entrypoint")
        hyper = (
            dict(_lenient(hyper_raw, _Hyperparameters, "hyperparameters").model_extra or {})
            if hyper_raw
            else {}
        )
        try:
            spec = TrainingSpec(kind="python", entrypoint=entrypoint.strip(), hyperparameters=hyper)
        except ValueError as exc:
            raise Unprocessable(f"invalid entrypoint: {exc}", field="entrypoint") from exc
        meta = meta.model_copy(update={"training": spec})
    elif hyper_raw is not None:
        raise Unprocessable("'hyperparameters' needs 'entrypoint'", field="hyperparameters")
    if meta.training is None and not fields.get("train_image", "").strip() and not file_coming:
        raise Unprocessable(
            "registration starts training: send 'train_image' (a container image) or fedge's "
            "'training_package' file with an 'entrypoint' field",
            field="train_image",
        )
    return meta


class _Hyperparameters(BaseModel):
    """fedge's ``hyperparameters`` form field: any JSON object."""

    model_config = ConfigDict(extra="allow")


_UPLOAD_DESCRIPTION = "JSON, the seed's fields (a trailing comma before '}' is accepted, as in the seed)"
_DATASET_BODY: dict[str, Any] = {
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
                            "description": _UPLOAD_DESCRIPTION + ": organization_id, samples_dimension",
                            "example": '{"organization_id": "5d066d58-06de-47ab-a2f6-c8f413e21947", '
                            '"samples_dimension": "(1,32,32)"}',
                        },
                        "dataset": {"type": "string", "format": "binary", "description": "the dataset file"},
                    },
                }
            }
        },
    }
}
_MODEL_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["metadata"],
                    "properties": {
                        "metadata": {
                            "type": "string",
                            "description": _UPLOAD_DESCRIPTION + ': "model params", "data params"',
                        },
                        "train_image": {"type": "string", "description": "the training container image"},
                        "training_package": {
                            "type": "string",
                            "format": "binary",
                            "description": "fedge: python training code (.tar.gz / .zip / wheel)",
                        },
                        "entrypoint": {"type": "string", "description": "fedge: module:function"},
                        "hyperparameters": {"type": "string", "description": "fedge: JSON object"},
                    },
                }
            }
        },
    }
}
_BYTES = {"schema": {"type": "string", "format": "binary"}}
_ARTIFACT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/octet-stream": _BYTES,
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


# ------------------------------------------------------------------------------------- Model Sharing
@_route(
    router.post, "/dataset", status_code=201, response_model=SeedDatasetCreated, openapi_extra=_DATASET_BODY
)
async def seed_register_dataset(
    request: Request, registry: RegistryDep, settings: SettingsDep, caller: Developer
) -> SeedDatasetCreated:
    """Seed table 10 ``POST /dataset``: the native ``POST /v1/datasets`` (streamed, SHA-256 + MD5, chain
    record), answering the seed's ``{"dataset_id"}``."""
    limits = UploadLimits(settings.max_upload_bytes, settings.max_metadata_bytes)
    parts = _SeedForm(multipart_parts(request, _DATASET_FORM, limits), DatasetMetadata, model=False)
    row = await registry.intake.dataset(aiter(parts), limits, created_by=caller.subject)
    return SeedDatasetCreated(dataset_id=row.id)


@_route(
    router.get,
    "/dataset/{dataset_id}",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": _BYTES}, "description": "the dataset bytes"}},
)
def seed_get_dataset(
    dataset_id: str, request: Request, registry: RegistryDep, caller: RegistryReader
) -> Response:
    """Seed table 10 ``GET /dataset/{id}``: the native download (checked against its chain record)."""
    return download_dataset(dataset_id, request, registry, caller)


@_route(
    router.post,
    "/model",
    status_code=201,
    response_model=SeedModelCreated,
    openapi_extra=_MODEL_BODY,
    responses={
        201: {
            "headers": {JOB_HEADER: {"description": "the training job started", "schema": {"type": "string"}}}
        }
    },
)
async def seed_register_model(
    request: Request,
    response: Response,
    registry: RegistryDep,
    manager: JobsDep,
    settings: SettingsDep,
    caller: Developer,
) -> SeedModelCreated:
    """Seed table 10 ``POST /model``: register and schedule the training (native ``POST /v1/models`` then
    ``POST /v1/models/{id}/train``), answering the seed's ``{"model_id"}``; the job: ``X-Fedge-Job-Id``."""
    limits = UploadLimits(settings.max_upload_bytes, settings.max_metadata_bytes)
    parts = _SeedForm(multipart_parts(request, _MODEL_FORM, limits), ModelMetadata, model=True)
    model = await registry.intake.model(aiter(parts), limits, created_by=caller.subject)
    job = await run_in_threadpool(manager.submit_or_fail, model.id, {}, caller.subject)
    response.headers[JOB_HEADER] = job.id
    return SeedModelCreated(model_id=model.id)


@_route(
    router.get,
    "/model/{model_id}",
    response_class=Response,
    responses={
        200: {
            "description": "the trained artifact, or (not trained yet) the seed's sentence as a JSON string",
            "content": {
                "application/octet-stream": _BYTES,
                "application/json": {"schema": {"type": "string"}},
            },
        },
        409: {"description": "the model's training job failed or was cancelled"},
    },
)
def seed_get_model(
    model_id: str, request: Request, registry: RegistryDep, manager: JobsDep, caller: RegistryReader
) -> Response:
    """Seed table 10 ``GET /model/{id}``: the newest trained artifact (native download, chain-checked), or
    the seed's "has not been trained yet" sentence; 409 naming the job when its training failed."""
    model = registry.get_model(model_id)
    if any(v.kind == "trained" for v in registry.ready_versions(model)):
        return models_api.download_model(model_id, request, registry, caller, None, "trained")
    last = manager.list_jobs(model_id, 1, 0)
    if last and last[0].state in _FAILED:
        job = last[0]
        raise Conflict(
            f"model {model_id} has not been trained: its training job {job.id} {job.state}"
            + (f": {job.error}" if job.error else ""),
            model_id=model_id,
            job_id=job.id,
        )
    return JSONResponse(not_trained_text(model_id))


@_route(
    router.put,
    "/model/{model_id}",
    status_code=201,
    response_model=ArtifactStored,
    openapi_extra=_ARTIFACT_BODY,
)
async def seed_store_model(
    model_id: str, request: Request, registry: RegistryDep, settings: SettingsDep, caller: ArtifactWriter
) -> ArtifactStored:
    """Seed table 10 ``PUT /model/{id}``: store a training result (native ``PUT /v1/models/{id}/artifact``;
    the model's job credential or an admin)."""
    assert ARTIFACT_FORM.file == "artifact"
    return await models_api.store_artifact(model_id, request, registry, settings, caller)


@_route(router.get, "/model/{model_id}/metadata", response_model=SeedModelContract)
def seed_model_metadata(model_id: str, registry: RegistryDep, _caller: RegistryReader) -> SeedModelContract:
    """Seed table 10 ``GET /model/{id}/metadata``: the model's chain record in the seed's shape."""
    registry.get_model(model_id)
    record = registry.chain_model_record(model_id)
    if record is None:
        raise NotFound(f"model {model_id} has no chain record")
    return _model_contract(record)


# ------------------------------------------------------------------------------------ Model Training
@_route(router.post, "/train/{model_id}", status_code=202, response_model=JobCreated)
def seed_train(model_id: str, manager: JobsDep, caller: Developer) -> JobCreated:
    """Seed table 16 ``POST /train/{id}``: queue a training job (native ``POST /v1/models/{id}/train``)."""
    return jobs_api.train_model(model_id, manager, caller, None)


# --------------------------------------------------------------------------------------- Blockchain
@_route(router.get, "/contract/{address}", response_model=SeedDatasetContract | SeedModelContract)
def seed_contract(
    address: str, registry: RegistryDep, chain: ChainDep, _admin: Admin
) -> SeedDatasetContract | SeedModelContract:
    """Seed table 15 ``GET /contract/{address}``: the seed's metadata of a dataset or model. fedge keeps
    them in one registry contract keyed by id: ``address`` is the dataset's or model's id (or the address
    of a seed record contract deployed with ``POST /v1/contracts``)."""
    if address.startswith("0x"):
        if address.lower() == chain.registry_address.lower():
            raise Unprocessable(
                f"{address} is fedge's registry contract, which holds every dataset and model keyed by id: "
                "ask for /contract/{dataset_id} or /contract/{model_id}",
                field="address",
            )
        with map_chain_errors(address=address, field="address"):
            described = chain.seed_contracts.describe(address)
        if described.get("contract_type") == "dataset":
            return SeedDatasetContract.model_validate(described)
        return SeedModelContract.model_validate(described)
    try:
        ds = registry.get_dataset(address)
    except NotFound:
        registry.get_model(address)  # 404 naming the model when it is neither
        record = registry.chain_model_record(address)
        if record is None:
            raise NotFound(f"model {address} has no chain record") from None
        return _model_contract(record)
    _, ds_record = registry.chain_dataset_hash(ds)
    if ds_record is None:
        raise NotFound(f"dataset {address} has no chain record")
    return SeedDatasetContract(
        organization_id=ds_record["organization_id"],
        samples_dimension=ds_record["samples_dimension"],
        size_bytes=ds_record["size_bytes"],
        hash=ds_record["md5"],
    )


def _model_contract(record: dict[str, Any]) -> SeedModelContract:
    return SeedModelContract(
        model_params=SeedModelParams(
            developer_id=record["developer_id"],
            organization_id=record["organization_id"],
            train_image_hash=record["train_image_hash"],
            res_hash=record["res_hash"],
        ),
        data_params=SeedDataParams(dataset_id=record["dataset_id"]),
    )


# -------------------------------------------------------------------------------------- Translation
@_route(
    router.post,
    "/translate/{model_id}",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": _BYTES}, "description": "the model in ONNX"}},
)
def seed_translate(
    model_id: str, request: Request, registry: RegistryDep, settings: SettingsDep, caller: Developer
) -> Response:
    """Seed table 17 ``POST /translate/{id}``: translate the newest trained version (native
    ``POST /v1/models/{id}/translate``: validated against the source on held-out samples, recorded on
    chain) and answer the ONNX model itself."""
    result = translate_model(model_id, registry, settings, caller, None)
    return models_api.download_model(model_id, request, registry, caller, result.version, None)
