"""Registry operations: datasets, models and model versions across SQL, the artifact store and the chain.

Every write follows one order so that a failure at any step leaves nothing behind:
SQL row ``pending`` -> object streamed (hashed) -> metadata validated -> chain record -> row ``ready``.
On failure the object and row are removed; rows still pending after a crash are reconciled at start-up.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError as SqlIntegrityError
from sqlalchemy.orm import Session, sessionmaker

from controller.db.models import Dataset, Model, ModelVersion, new_id, utcnow
from controller.errors import Conflict, IntegrityCheckFailed, NotFound, ServiceUnavailable, Unprocessable
from controller.registry.hashing import Digests, HashingReader, IntegrityError, hash_chunks, iter_verified
from controller.registry.schemas import DatasetMetadata, ModelMetadata, TrainingSpec
from controller.storage.base import ArtifactStore, ObjectNotFound, StorageError

if TYPE_CHECKING:
    from controller.chain.base import ChainBackend

log = logging.getLogger("fedge.registry")
M = TypeVar("M", bound=BaseModel)

PENDING, READY = "pending", "ready"
REGISTERED, TRAINED = "registered", "trained"
VERSION_KINDS = ("trained", "onnx", "quantized")


@dataclass(frozen=True)
class Buckets:
    """Bucket names (the seed's: datasets, models), optionally prefixed."""

    datasets: str
    models: str
    packages: str

    @classmethod
    def with_prefix(cls, prefix: str) -> Buckets:
        return cls(datasets=f"{prefix}datasets", models=f"{prefix}models", packages=f"{prefix}packages")


def parse_json_field(raw: str | None, schema: type[M], field: str) -> M:
    """Validate a JSON form field; 422 names the field (and the nested path) that is wrong."""
    if raw is None:
        raise Unprocessable(f"missing form field '{field}'", field=field)
    try:
        return schema.model_validate_json(raw)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False)
        if errors and errors[0]["type"] == "json_invalid":
            raise Unprocessable(f"'{field}' is not valid JSON: {errors[0]['msg']}", field=field) from exc
        first = errors[0]
        path = ".".join(str(p) for p in (field, *first["loc"]))
        raise Unprocessable(
            f"invalid {path}: {first['msg']}",
            field=path,
            errors=[
                {"field": ".".join(str(p) for p in (field, *e["loc"])), "message": e["msg"]} for e in errors
            ],
        ) from exc


class Registry:
    """Datasets and models over SQL + ArtifactStore + chain."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        store: ArtifactStore,
        buckets: Buckets,
        chain: ChainBackend,
    ) -> None:
        self.sessions = sessions
        self.store = store
        self.buckets = buckets
        self.chain = chain
        # (bucket, key) -> (store change token, sha256) of objects hashed in full against the chain.
        self._verified: OrderedDict[tuple[str, str], tuple[str, str]] = OrderedDict()
        self._verified_lock = threading.Lock()

    VERIFIED_CACHE_SIZE = 4096

    # ----------------------------------------------------------------- datasets
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
        with contextlib.suppress(StorageError):
            self.store.delete(ds.bucket, ds.object_key)
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
            receipt = self._chain_call(
                "register the dataset",
                lambda c: c.register_dataset(
                    ds.id,
                    meta.organization_id,
                    meta.samples_dimension,
                    digests.size,
                    bytes.fromhex(digests.sha256),
                    bytes.fromhex(digests.md5),
                ),
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

    def get_dataset(self, dataset_id: str) -> Dataset:
        with self.sessions() as s:
            ds = s.get(Dataset, dataset_id)
            if ds is None or ds.status != READY:
                raise NotFound(f"dataset {dataset_id} not found")
            return ds

    def list_datasets(
        self, limit: int, offset: int, organization_id: str | None = None
    ) -> tuple[list[Dataset], int]:
        with self.sessions() as s:
            q = select(Dataset).where(Dataset.status == READY)
            if organization_id:
                q = q.where(Dataset.organization_id == organization_id)
            total = s.scalar(select(func.count()).select_from(q.subquery())) or 0
            rows = s.scalars(
                q.order_by(Dataset.created_at.desc(), Dataset.id).limit(limit).offset(offset)
            ).all()
            return list(rows), total

    # ------------------------------------------------------------------- models
    def register_model(
        self, meta: ModelMetadata, created_by: str, package: tuple[str, Digests] | None = None
    ) -> Model:
        """Validate the dataset reference, write the chain record, store the model ``registered``.
        ``package`` is an uploaded training package (object key in the packages bucket, digests): its
        SHA-256 becomes the training digest recorded on chain."""
        if package is not None:
            digests = package[1]
            spec = meta.training
            if spec is None or spec.kind != "python":
                raise Unprocessable("a training package needs a python training spec", field="training.kind")
            if spec.package_sha256 and spec.package_sha256 != digests.sha256:
                raise Unprocessable(
                    f"training.package_sha256 {spec.package_sha256} does not match the uploaded package "
                    f"({digests.sha256})",
                    field="training.package_sha256",
                )
            pinned = spec.model_copy(update={"package_sha256": digests.sha256})
            meta = meta.model_copy(update={"training": pinned})
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
            receipt = self._chain_call(
                "register the model",
                lambda c: c.register_model(
                    model.id,
                    model.organization_id,
                    model.developer_id,
                    model.dataset_id,
                    bytes.fromhex(digest),
                ),
            )
            model.chain_address, model.chain_tx = receipt.contract_address, receipt.tx_hash
            with self.sessions.begin() as s:
                row = s.get(Model, model.id)
                assert row is not None
                row.chain_address, row.chain_tx = model.chain_address, model.chain_tx
                row.status = REGISTERED
                return row
        except BaseException:
            with self.sessions.begin() as s:
                s.execute(delete(Model).where(Model.id == model.id))
            raise

    def get_model(self, model_id: str) -> Model:
        with self.sessions() as s:
            model = s.scalar(select(Model).where(Model.id == model_id))
            if model is None or model.status == PENDING:
                raise NotFound(f"model {model_id} not found")
            _ = [v for v in model.versions]  # load versions while the session is open
            return model

    def list_models(self, limit: int, offset: int, dataset_id: str | None = None) -> tuple[list[Model], int]:
        with self.sessions() as s:
            q = select(Model).where(Model.status != PENDING)
            if dataset_id:
                q = q.where(Model.dataset_id == dataset_id)
            total = s.scalar(select(func.count()).select_from(q.subquery())) or 0
            rows = s.scalars(q.order_by(Model.created_at.desc(), Model.id).limit(limit).offset(offset)).all()
            for m in rows:
                _ = [v for v in m.versions]
            return list(rows), total

    def ready_versions(self, model: Model) -> list[ModelVersion]:
        return [v for v in model.versions if v.status == READY]

    def resolve_version(self, model_id: str, version: int | None, kind: str | None = None) -> ModelVersion:
        """The requested version, or the newest ready one of ``kind`` (default: trained)."""
        model = self.get_model(model_id)
        ready = self.ready_versions(model)
        if version is not None:
            for v in ready:
                if v.version == version:
                    return v
            raise NotFound(f"model {model_id} has no version {version}")
        wanted = kind or "trained"
        candidates = [v for v in ready if v.kind == wanted]
        if not candidates:
            if wanted == "trained":
                raise Conflict(
                    f"model {model_id} has not been trained yet", model_id=model_id, model_status=model.status
                )
            raise NotFound(f"model {model_id} has no {wanted} version")
        return candidates[-1]

    def begin_version(
        self, model_id: str, kind: str, created_by: str, fmt: str | None, source_version: int | None
    ) -> ModelVersion:
        """Reserve the next version number (row ``pending``) before storing its artifact."""
        if kind not in VERSION_KINDS:
            raise Unprocessable(f"kind must be one of {', '.join(VERSION_KINDS)}", field="kind")
        model = self.get_model(model_id)
        if source_version is not None and all(
            v.version != source_version for v in self.ready_versions(model)
        ):
            raise Unprocessable(f"model {model_id} has no version {source_version}", field="source_version")
        for _attempt in range(5):
            try:
                with self.sessions.begin() as s:
                    top = s.scalar(
                        select(func.max(ModelVersion.version)).where(ModelVersion.model_id == model_id)
                    )
                    mv = ModelVersion(
                        model_id=model_id,
                        version=(top or 0) + 1,
                        kind=kind,
                        status=PENDING,
                        format=fmt,
                        bucket=self.buckets.models,
                        object_key=new_id(),
                        source_version=source_version,
                        created_by=created_by,
                    )
                    s.add(mv)
                return mv
            except SqlIntegrityError:
                continue  # another writer took that number; try the next
        raise Conflict(f"could not allocate a version for model {model_id}; retry")

    def discard_version(self, mv: ModelVersion) -> None:
        with contextlib.suppress(StorageError):
            self.store.delete(mv.bucket, mv.object_key)
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

    def add_version_from_file(
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
        from controller.chain.errors import AlreadyVerified

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
            try:
                receipt = self._chain_call("verify the model", lambda c: c.verify_model(mv.model_id, digest))
            except ServiceUnavailable as exc:
                # verified by an earlier attempt whose SQL commit then failed: keep this as an artifact
                if not isinstance(exc.__cause__, AlreadyVerified):
                    raise
        if receipt is None:
            source = self._chain_source(mv)
            receipt = self._chain_call(
                "record the artifact",
                lambda c: c.record_artifact(mv.model_id, mv.version, mv.kind, digest, source),
            )
        mv.chain_tx = receipt.tx_hash

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
        _, record = self.chain_version_hash(src)
        return 0 if record == "model.verify" else src.version

    def _chain_call(self, what: str, fn: Any) -> Any:
        from controller.chain.errors import ChainError

        try:
            return fn(self.chain)
        except ChainError as exc:
            raise ServiceUnavailable(f"could not {what} on chain: {exc}", backend="chain") from exc

    # ---------------------------------------------------------------- reading
    def open_object(self, bucket: str, key: str) -> Iterator[bytes]:
        try:
            return self.store.open(bucket, key)
        except StorageError as exc:
            raise ServiceUnavailable(f"artifact store failed: {exc}", backend="storage") from exc

    def recompute(self, bucket: str, key: str) -> Digests | None:
        """Hash the stored object again (streamed); None if the object is gone."""
        try:
            return hash_chunks(self.store.open(bucket, key))
        except ObjectNotFound:
            return None
        except StorageError as exc:
            raise ServiceUnavailable(f"artifact store failed: {exc}", backend="storage") from exc

    def chain_dataset_hash(self, ds: Dataset) -> tuple[str | None, dict[str, Any] | None]:
        """(SHA-256 hex on chain, decoded record) for a dataset; (None, None) if there is no record."""
        from controller.chain.errors import RecordNotFound

        try:
            rec = self._chain_call("read the dataset record", lambda c: c.get_dataset(ds.id))
        except ServiceUnavailable as exc:
            if isinstance(exc.__cause__, RecordNotFound):
                return None, None
            raise
        return rec.sha256.hex(), {
            "contract_address": rec.contract_address,
            "organization_id": rec.organization_id,
            "samples_dimension": rec.samples_dimension,
            "size_bytes": rec.size_bytes,
            "sha256": rec.sha256.hex(),
            "md5": rec.md5.hex(),
            "registered_at": rec.registered_at,
        }

    def chain_model_record(self, model_id: str) -> dict[str, Any] | None:
        """The model's decoded chain record (seed-style names included), or None."""
        from controller.chain.errors import RecordNotFound

        try:
            rec = self._chain_call("read the model record", lambda c: c.get_model(model_id))
        except ServiceUnavailable as exc:
            if isinstance(exc.__cause__, RecordNotFound):
                return None
            raise
        return {
            "contract_address": rec.contract_address,
            "organization_id": rec.organization_id,
            "developer_id": rec.developer_id,
            "dataset_id": rec.dataset_id,
            "train_image_hash": rec.training_digest.hex(),
            "verified": rec.verified,
            "res_hash": rec.result_hash.hex() if rec.result_hash else None,
            "verified_at": rec.verified_at,
            "registered_at": rec.registered_at,
        }

    def chain_version_hash(self, mv: ModelVersion) -> tuple[str | None, str]:
        """(SHA-256 hex on chain, which record holds it) for a model version."""
        from controller.chain.errors import RecordNotFound

        try:
            art = self._chain_call(
                "read the artifact record", lambda c: c.get_artifact(mv.model_id, mv.version)
            )
            return art.sha256.hex(), "artifact"
        except ServiceUnavailable as exc:
            if not isinstance(exc.__cause__, RecordNotFound):
                raise
        if mv.kind == "trained":
            record = self.chain_model_record(mv.model_id)
            if record and record["res_hash"]:
                return str(record["res_hash"]), "model.verify"
        return None, "none"

    def verified_chunks(self, bucket: str, key: str, expected: str | None, what: str) -> Iterator[bytes]:
        """Integrity on read: hash the stored object against the chain record first (409 problem
        'integrity check failed' on mismatch), then stream it while hashing again (a change between the
        two passes aborts the transfer before its last chunk).

        The first pass is skipped when this process already hashed the object in full against the same
        chain hash and the store's change token (S3 ETag/version/Last-Modified; file size, mtime, ctime,
        inode) is unchanged since: the object is then read once. The streaming hash still guards it."""
        if expected is None:
            raise IntegrityCheckFailed(f"{what} has no chain record to check against")
        try:
            token = self.store.stat(bucket, key).token
        except ObjectNotFound:
            raise IntegrityCheckFailed(f"{what}: stored object is missing") from None
        except StorageError as exc:
            raise ServiceUnavailable(f"artifact store failed: {exc}", backend="storage") from exc
        with self._verified_lock:
            known = self._verified.get((bucket, key))
        if not token or known != (token, expected):
            self._check_stored(bucket, key, expected, what)
            if token:
                with self._verified_lock:
                    self._verified[(bucket, key)] = (token, expected)
                    self._verified.move_to_end((bucket, key))
                    while len(self._verified) > self.VERIFIED_CACHE_SIZE:
                        self._verified.popitem(last=False)
        return self._forget_on_mismatch(bucket, key, iter_verified(self.open_object(bucket, key), expected))

    def _forget_on_mismatch(self, bucket: str, key: str, chunks: Iterator[bytes]) -> Iterator[bytes]:
        try:
            yield from chunks
        except IntegrityError:
            with self._verified_lock:
                self._verified.pop((bucket, key), None)
            raise

    def _check_stored(self, bucket: str, key: str, expected: str, what: str) -> None:
        """Hash the whole stored object; IntegrityCheckFailed (409) unless it matches ``expected``."""
        actual = self.recompute(bucket, key)
        if actual is None:
            raise IntegrityCheckFailed(f"{what}: stored object is missing")
        if actual.sha256 != expected:
            with self._verified_lock:
                self._verified.pop((bucket, key), None)
            log.error("integrity check failed for %s: stored %s, chain %s", what, actual.sha256, expected)
            raise IntegrityCheckFailed(
                f"{what}: stored object's sha256 {actual.sha256} differs from the chain record {expected}",
                sha256_stored=actual.sha256,
                sha256_chain=expected,
            )

    # ---------------------------------------------------------- reconciliation
    def reconcile(self, grace_seconds: int) -> dict[str, int]:
        """Repair what a crash left: pending rows older than the grace period lose their object and row;
        objects older than the grace period that no row references are deleted."""
        cutoff = utcnow() - dt.timedelta(seconds=grace_seconds)
        removed = {"pending_datasets": 0, "pending_versions": 0, "pending_models": 0, "orphan_objects": 0}
        with self.sessions() as s:
            stale_ds = s.scalars(
                select(Dataset).where(Dataset.status == PENDING, Dataset.created_at <= cutoff)
            ).all()
            stale_mv = s.scalars(
                select(ModelVersion).where(ModelVersion.status == PENDING, ModelVersion.created_at <= cutoff)
            ).all()
            stale_models = s.scalars(
                select(Model).where(Model.status == PENDING, Model.created_at <= cutoff)
            ).all()
        for ds in stale_ds:
            self.discard_dataset(ds)
            removed["pending_datasets"] += 1
        for mv in stale_mv:
            self.discard_version(mv)
            removed["pending_versions"] += 1
        for m in stale_models:
            with self.sessions.begin() as s:
                s.execute(delete(Model).where(Model.id == m.id, Model.status == PENDING))
            removed["pending_models"] += 1
        with self.sessions() as s:
            known_ds = set(s.scalars(select(Dataset.object_key)).all())
            known_mv = set(s.scalars(select(ModelVersion.object_key)).all())
            known_pkg = {str((t or {}).get("package_key")) for t in s.scalars(select(Model.training)).all()}
        for bucket, known in (
            (self.buckets.datasets, known_ds),
            (self.buckets.models, known_mv),
            (self.buckets.packages, known_pkg),
        ):
            for obj in list(self.store.list(bucket)):
                if obj.key not in known and obj.modified <= cutoff.timestamp():
                    self.store.delete(bucket, obj.key)
                    removed["orphan_objects"] += 1
        if any(removed.values()):
            log.warning("start-up reconciliation removed %s", removed)
        return removed


def _clean_filename(name: str | None) -> str | None:
    """Keep only the last path component of a client filename (it is metadata, never a path)."""
    if not name:
        return None
    base = name.replace("\\", "/").rsplit("/", 1)[-1].strip()
    base = "".join(ch for ch in base if ch.isprintable() and ch not in '"\r\n')
    return base[:255] or None
