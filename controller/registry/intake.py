"""The registry's writes, each one saga with one order, so that a failure at any step leaves nothing:

    reserve the row (``pending``, a fresh object key) -> stream the object into the store, hashed on the
    way -> validate the metadata -> write the chain record -> mark the row ready

On any failure the object and the row are removed. Uploads arrive as parts (:mod:`.upload`); JSON fields
come validated as soon as they have arrived, so a bad metadata part sent before the file stops the
upload before a byte of the file is stored. Rows left ``pending`` by a crash are removed at start-up
(:mod:`.reconcile`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from anyio import to_thread
from pydantic import BaseModel
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from controller.chain.errors import AlreadyVerified, RecordExists
from controller.db.models import Dataset, Model, ModelVersion, new_id
from controller.errors import NotFound, ServiceUnavailable, Unprocessable
from controller.registry.catalog import PENDING, READY, REGISTERED, TRAINED, Buckets, Catalog
from controller.registry.chain_problems import map_chain_errors
from controller.registry.hashing import Digests, HashingReader
from controller.registry.packages import check_package
from controller.registry.provenance import Provenance
from controller.registry.schemas import DatasetMetadata, ModelMetadata, TrainingSpec
from controller.registry.upload import (
    FieldPart,
    StoredUpload,
    UploadForm,
    UploadLimits,
    UploadPart,
    UploadTarget,
    store_part,
)
from controller.registry.versions import ATTEMPTS, reserve_version, skip_spent_version
from controller.storage.base import ArtifactStore, StorageError

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from controller.chain.base import ChainBackend, TxReceipt

M = TypeVar("M", bound=BaseModel)

DATASET_FORM = UploadForm(file="dataset", json={"metadata": DatasetMetadata})
"""A dataset upload: the ``dataset`` file and its ``metadata`` JSON."""
MODEL_FORM = UploadForm(file="training_package", json={"metadata": ModelMetadata})
"""A model registration: ``metadata`` JSON, the seed's ``train_image`` or a ``training_package`` file."""
ARTIFACT_FORM = UploadForm(file="artifact")
"""A model version: the ``artifact`` file (or a raw body)."""

Parts = AsyncIterable[UploadPart]


@dataclass
class _Received:
    """What an upload's parts delivered: its fields, and the file once it is stored."""

    form: UploadForm
    fields: dict[str, str | BaseModel] = field(default_factory=dict)
    stored: StoredUpload | None = None

    def file(self) -> StoredUpload:
        if self.stored is None:
            raise Unprocessable(f"missing file part '{self.form.file}'", field=self.form.file)
        return self.stored

    def json(self, name: str, schema: type[M]) -> M:
        value = self.fields.get(name)
        if value is None:
            raise Unprocessable(f"missing form field '{name}'", field=name)
        if not isinstance(value, schema):  # the part source did not validate the form's JSON field
            raise TypeError(f"form field '{name}' arrived as {type(value).__name__}, not {schema.__name__}")
        return value

    def text(self, name: str) -> str | None:
        value = self.fields.get(name)
        return value if isinstance(value, str) else None


class Intake:
    """Datasets, models and model versions written all or nothing across SQL, the store and the chain."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        store: ArtifactStore,
        buckets: Buckets,
        chain: ChainBackend,
        catalog: Catalog,
        provenance: Provenance,
    ) -> None:
        self.sessions = sessions
        self.store = store
        self.buckets = buckets
        self.chain = chain
        self.catalog = catalog
        self.provenance = provenance

    # ------------------------------------------------------------- uploads
    async def dataset(self, parts: Parts, limits: UploadLimits, *, created_by: str) -> Dataset:
        """Register an uploaded dataset (``dataset`` file + ``metadata``). 413 past the limit, 422 for bad
        or missing metadata or file, 503 when the store or chain fails: each leaves nothing behind."""
        ds = await to_thread.run_sync(self.begin_dataset, created_by)
        target = UploadTarget(self.store, ds.bucket, ds.object_key, limits.file_bytes)
        try:
            got = await self._receive(parts, DATASET_FORM, target)
            stored = got.file()
            meta = got.json("metadata", DatasetMetadata)
        except BaseException:
            await to_thread.run_sync(self.discard_dataset, ds)
            raise
        return await to_thread.run_sync(
            self.complete_dataset, ds, meta, stored.digests, stored.filename, stored.content_type
        )

    async def model(self, parts: Parts, limits: UploadLimits, *, created_by: str) -> Model:
        """Register a model from the seed's form (``metadata``, optional ``train_image``) with an
        optional ``training_package`` file, whose SHA-256 becomes the training digest on chain."""
        key = new_id()
        target = UploadTarget(self.store, self.buckets.packages, key, limits.file_bytes)
        try:
            got = await self._receive(parts, MODEL_FORM, target, before_file=_check_before_package)
            meta = _model_form(got)
            package = (key, got.stored.digests) if got.stored is not None else None
            if package is not None:
                await to_thread.run_sync(self._check_package, key)
            return await to_thread.run_sync(self.register_model, meta, created_by, package)
        except BaseException:
            await to_thread.run_sync(self._delete_object, self.buckets.packages, key)
            raise

    async def version(
        self,
        model_id: str,
        parts: Parts,
        limits: UploadLimits,
        *,
        kind: str,
        created_by: str,
        fmt: str | None,
        source_version: int | None,
        filename: str | None,
    ) -> ModelVersion:
        """Store an uploaded artifact (``artifact`` file, or the whole body) as the model's next version."""
        mv = await to_thread.run_sync(self.begin_version, model_id, kind, created_by, fmt, source_version)
        target = UploadTarget(self.store, mv.bucket, mv.object_key, limits.file_bytes)
        try:
            stored = (await self._receive(parts, ARTIFACT_FORM, target)).file()
            if stored.digests.size == 0:
                raise Unprocessable("the artifact is empty", field="artifact")
        except BaseException:
            await to_thread.run_sync(self.discard_version, mv)
            raise
        return await to_thread.run_sync(
            self.complete_version, mv, stored.digests, filename or stored.filename, stored.content_type
        )

    async def _receive(
        self,
        parts: Parts,
        form: UploadForm,
        target: UploadTarget,
        before_file: Callable[[_Received], None] | None = None,
    ) -> _Received:
        """Read every part: fields are kept (JSON ones already validated), the one file part is streamed
        into ``target`` once ``before_file`` accepted the fields that came before it."""
        got = _Received(form)
        async for part in parts:
            if isinstance(part, FieldPart):
                got.fields[part.name] = part.value
            elif part.name != form.file:
                raise Unprocessable(f"unexpected file part '{part.name}'", field=part.name)
            elif got.stored is not None:
                raise Unprocessable(f"more than one '{form.file}' part", field=form.file)
            else:
                if before_file is not None:
                    before_file(got)
                got.stored = await store_part(part, target)
        return got

    # ------------------------------------------------------------ datasets
    def begin_dataset(self, created_by: str) -> Dataset:
        """Reserve a dataset id and object key (row ``pending``) before any byte is stored."""
        with self.sessions.begin() as s:
            ds = Dataset(
                status=PENDING, bucket=self.buckets.datasets, object_key=new_id(), created_by=created_by
            )
            s.add(ds)
        return ds

    def discard_dataset(self, ds: Dataset) -> None:
        """Remove a pending dataset's object and row (upload failed or was refused)."""
        self._delete_object(ds.bucket, ds.object_key)
        with self.sessions.begin() as s:
            s.execute(delete(Dataset).where(Dataset.id == ds.id, Dataset.status == PENDING))

    def complete_dataset(
        self,
        ds: Dataset,
        meta: DatasetMetadata,
        digests: Digests,
        filename: str | None,
        content_type: str | None,
    ) -> Dataset:
        """Record the chain entry and mark the dataset ready; on any failure remove everything."""
        try:
            with map_chain_errors("register the dataset"):
                receipt = self.chain.register_dataset(
                    ds.id,
                    meta.organization_id,
                    meta.samples_dimension,
                    digests.size,
                    bytes.fromhex(digests.sha256),
                    bytes.fromhex(digests.md5),
                )
            ds.chain_address, ds.chain_tx = receipt.contract_address, receipt.tx_hash
            with self.sessions.begin() as s:
                row = s.get(Dataset, ds.id)
                if row is None:
                    raise NotFound(f"dataset {ds.id} vanished during upload")
                extra = meta.model_extra or {}
                row.name, row.description = meta.name, meta.description
                row.organization_id, row.samples_dimension = meta.organization_id, meta.samples_dimension
                row.extra = dict(extra)
                row.filename = _clean_filename(filename)
                row.content_type = (content_type or "application/octet-stream")[:255]
                row.size_bytes, row.sha256, row.md5 = digests.size, digests.sha256, digests.md5
                row.chain_address, row.chain_tx = ds.chain_address, ds.chain_tx
                row.status = READY
                return row
        except BaseException:
            self.discard_dataset(ds)
            raise

    # -------------------------------------------------------------- models
    def _check_package(self, key: str) -> None:
        """Refuse (422) an uploaded training package that is not a safe archive, before any row or chain
        record exists."""
        check_package(self.store.open(self.buckets.packages, key))

    def register_model(
        self, meta: ModelMetadata, created_by: str, package: tuple[str, Digests] | None = None
    ) -> Model:
        """Validate the dataset reference, write the chain record, store the model ``registered``.
        ``package`` is an uploaded training package (object key in the packages bucket, digests): its
        SHA-256 becomes the training digest recorded on chain."""
        if package is not None:
            meta = _pin_package(meta, package[1])
        with self.sessions() as s:
            ds = s.get(Dataset, meta.data_params.dataset_id)
            if ds is None or ds.status != READY:
                raise Unprocessable(
                    f"dataset {meta.data_params.dataset_id} does not exist", field="data_params.dataset_id"
                )
        training = meta.training.model_dump() if meta.training else {}
        if package is not None:
            training["package_key"] = package[0]
        digest = meta.training.digest() if meta.training else TrainingSpec.digest_of(training)
        model = Model(
            id=new_id(),
            status=PENDING,
            name=meta.name,
            description=meta.description,
            organization_id=meta.model_params.organization_id,
            developer_id=meta.model_params.developer_id,
            dataset_id=meta.data_params.dataset_id,
            training=training,
            training_digest=digest,
            created_by=created_by,
        )
        with self.sessions.begin() as s:
            s.add(model)
        try:
            with map_chain_errors("register the model"):
                receipt = self.chain.register_model(
                    model.id,
                    model.organization_id,
                    model.developer_id,
                    model.dataset_id,
                    bytes.fromhex(digest),
                )
            model.chain_address, model.chain_tx = receipt.contract_address, receipt.tx_hash
            with self.sessions.begin() as s:
                row = s.get(Model, model.id)
                assert row is not None
                row.chain_address, row.chain_tx = model.chain_address, model.chain_tx
                row.status = REGISTERED
                return row
        except BaseException:
            self.discard_model(model.id)
            raise

    def discard_model(self, model_id: str) -> None:
        """Remove a model row that never became ``registered``."""
        with self.sessions.begin() as s:
            s.execute(delete(Model).where(Model.id == model_id, Model.status == PENDING))

    # ------------------------------------------------------------ versions
    def begin_version(
        self, model_id: str, kind: str, created_by: str, fmt: str | None, source_version: int | None
    ) -> ModelVersion:
        """Reserve the next version number (row ``pending``) before storing its artifact."""
        return reserve_version(
            self.sessions, self.catalog, self.buckets.models, model_id, kind, created_by, fmt, source_version
        )

    def discard_version(self, mv: ModelVersion) -> None:
        self._delete_object(mv.bucket, mv.object_key)
        with self.sessions.begin() as s:
            s.execute(delete(ModelVersion).where(ModelVersion.id == mv.id, ModelVersion.status == PENDING))

    def complete_version(
        self,
        mv: ModelVersion,
        digests: Digests,
        filename: str | None,
        content_type: str | None,
        descriptor: dict[str, Any] | None = None,
    ) -> ModelVersion:
        """Chain step (first trained result: ``verify``; later ones: artifact record), then ready."""
        try:
            self._chain_version(mv, digests)
            with self.sessions.begin() as s:
                row = s.get(ModelVersion, mv.id)
                model = s.get(Model, mv.model_id)
                if row is None or model is None:
                    raise NotFound(f"model {mv.model_id} vanished during upload")
                row.filename = _clean_filename(filename)
                row.content_type = (content_type or "application/octet-stream")[:255]
                row.size_bytes, row.sha256, row.md5 = digests.size, digests.sha256, digests.md5
                row.chain_tx = mv.chain_tx
                row.descriptor = descriptor
                row.status = READY
                if row.kind == "trained":
                    model.status = TRAINED
                return row
        except BaseException:
            self.discard_version(mv)
            raise

    def version_from_file(
        self,
        model_id: str,
        kind: str,
        path: Path,
        *,
        created_by: str,
        fmt: str | None,
        source_version: int | None,
        descriptor: dict[str, Any] | None,
        limit: int | None = None,
    ) -> ModelVersion:
        """Store a local file as a new version (hashed while stored, chain-recorded), all or nothing."""
        mv = self.begin_version(model_id, kind, created_by, fmt, source_version)
        try:
            with open(path, "rb") as fh:
                reader = HashingReader(fh, limit)
                self.store.put(mv.bucket, mv.object_key, reader)
        except StorageError as exc:
            self.discard_version(mv)
            raise ServiceUnavailable(f"artifact store failed: {exc}", backend="storage") from exc
        except BaseException:
            self.discard_version(mv)
            raise
        return self.complete_version(
            mv, reader.digests(), path.name, "application/octet-stream", descriptor=descriptor
        )

    def _chain_version(self, mv: ModelVersion, digests: Digests) -> None:
        """First trained result of a model: ``verify(resultHash)`` (once per model). Every other version
        (retrained results, ONNX translations, quantized variants): an artifact record keyed by version."""
        digest = bytes.fromhex(digests.sha256)
        with self.sessions() as s:
            earlier_trained = s.scalar(
                select(func.count()).where(
                    ModelVersion.model_id == mv.model_id,
                    ModelVersion.kind == "trained",
                    ModelVersion.status == READY,
                )
            )
        receipt = None
        if mv.kind == "trained" and not earlier_trained:
            # AlreadyVerified: an earlier attempt verified it, then its SQL commit failed: keep an artifact
            with map_chain_errors("verify the model"), contextlib.suppress(AlreadyVerified):
                receipt = self.chain.verify_model(mv.model_id, digest)
        if receipt is None:
            source = self._chain_source(mv)
            with map_chain_errors("record the artifact"):
                receipt = self._record_artifact(mv, digest, source)
        mv.chain_tx = receipt.tx_hash

    def _record_artifact(self, mv: ModelVersion, digest: bytes, source: int) -> TxReceipt:
        """The artifact record of ``mv``. A number already on chain was spent by an earlier upload whose
        SQL commit failed after its chain record (no row holds it, and chain records are written once):
        ``mv`` moves to the next free number and is recorded there."""
        attempts = 0
        while True:
            try:
                return self.chain.record_artifact(mv.model_id, mv.version, mv.kind, digest, source)
            except RecordExists:
                attempts += 1
                if attempts == ATTEMPTS:
                    raise
                spent = mv.version
                skip_spent_version(self.sessions, mv)
                log.warning(
                    "model %s version %s is on chain without a row (an upload failed after its chain "
                    "record); this upload becomes version %s",
                    mv.model_id,
                    spent,
                    mv.version,
                )

    def _chain_source(self, mv: ModelVersion) -> int:
        """The chain's name for a version's source: 0 for the verified training result (held by the model
        record), else the source's own artifact version."""
        if mv.source_version is None:
            return 0
        with self.sessions() as s:
            src = s.scalar(
                select(ModelVersion).where(
                    ModelVersion.model_id == mv.model_id, ModelVersion.version == mv.source_version
                )
            )
        if src is None:
            return 0
        _, record = self.provenance.chain_version_hash(src)
        return 0 if record == "model.verify" else src.version

    def _delete_object(self, bucket: str, key: str) -> None:
        with contextlib.suppress(StorageError):
            self.store.delete(bucket, key)


def _model_form(got: _Received) -> ModelMetadata:
    """The model metadata of the seed's form: ``metadata``, with ``train_image`` as its container spec."""
    meta = got.json("metadata", ModelMetadata)
    image = got.text("train_image")
    if image:
        if meta.training is not None:
            raise Unprocessable(
                "give either 'train_image' or metadata.training, not both", field="train_image"
            )
        meta = meta.model_copy(update={"training": TrainingSpec(kind="container", image=image.strip())})
    return meta


def _check_before_package(got: _Received) -> None:
    """Refuse a training package before storing it when the fields sent ahead of it already rule it out."""
    if "metadata" in got.fields:
        _check_package_spec(_model_form(got))


def _check_package_spec(meta: ModelMetadata) -> None:
    spec = meta.training
    if spec is None or spec.kind != "python":
        raise Unprocessable("a training package needs a python training spec", field="training.kind")


def _pin_package(meta: ModelMetadata, digests: Digests) -> ModelMetadata:
    """The metadata with its python training spec pinned to the uploaded package's SHA-256."""
    _check_package_spec(meta)
    spec = meta.training
    assert spec is not None
    if spec.package_sha256 and spec.package_sha256 != digests.sha256:
        raise Unprocessable(
            f"training.package_sha256 {spec.package_sha256} does not match the uploaded package "
            f"({digests.sha256})",
            field="training.package_sha256",
        )
    pinned = spec.model_copy(update={"package_sha256": digests.sha256})
    return meta.model_copy(update={"training": pinned})


def _clean_filename(name: str | None) -> str | None:
    """Keep only the last path component of a client filename (it is metadata, never a path)."""
    if not name:
        return None
    base = name.replace("\\", "/").rsplit("/", 1)[-1].strip()
    base = "".join(ch for ch in base if ch.isprintable() and ch not in '"\r\n')
    return base[:255] or None
