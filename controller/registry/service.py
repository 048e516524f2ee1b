"""The registry facade: datasets, models and model versions across SQL, the artifact store and the chain.

It only composes the registry's rooms, so that callers hold one service:

    catalog.py         rows and read-only queries (ready datasets, registered models, versions)
    versions.py        version allocation
    intake.py          every write as one all-or-nothing saga (uploads included)
    provenance.py      chain reads, integrity on read, the one cache of chain facts
    reconcile.py       start-up repair of what a crash left half-written
    chain_problems.py  chain errors mapped once to problems
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session, sessionmaker

from controller.db.models import Dataset, Model, ModelVersion
from controller.registry.catalog import Buckets, Catalog
from controller.registry.hashing import Digests
from controller.registry.intake import Intake
from controller.registry.provenance import Provenance
from controller.registry.reconcile import reconcile
from controller.registry.schemas import ModelMetadata
from controller.storage.base import ArtifactStore

if TYPE_CHECKING:
    from controller.chain.base import ChainBackend


class Registry:
    """Datasets and models over SQL + ArtifactStore + chain: ``catalog`` reads, ``intake`` writes,
    ``provenance`` checks against the chain."""

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
        self.catalog = Catalog(sessions)
        self.provenance = Provenance(store, chain)
        self.intake = Intake(sessions, store, buckets, chain, self.catalog, self.provenance)

    def reconcile(self, grace_seconds: int) -> dict[str, int]:
        """Start-up repair (see :mod:`controller.registry.reconcile`)."""
        return reconcile(self.intake, grace_seconds)

    # ---------------------------------------------------------------- reads
    def get_dataset(self, dataset_id: str) -> Dataset:
        return self.catalog.get_dataset(dataset_id)

    def list_datasets(
        self, limit: int, offset: int, organization_id: str | None = None
    ) -> tuple[list[Dataset], int]:
        return self.catalog.list_datasets(limit, offset, organization_id)

    def get_model(self, model_id: str) -> Model:
        return self.catalog.get_model(model_id)

    def list_models(self, limit: int, offset: int, dataset_id: str | None = None) -> tuple[list[Model], int]:
        return self.catalog.list_models(limit, offset, dataset_id)

    def ready_versions(self, model: Model) -> list[ModelVersion]:
        return self.catalog.ready_versions(model)

    def resolve_version(self, model_id: str, version: int | None, kind: str | None = None) -> ModelVersion:
        return self.catalog.resolve_version(model_id, version, kind)

    # ----------------------------------------------------------- provenance
    def chain_dataset_hash(self, ds: Dataset) -> tuple[str | None, dict[str, Any] | None]:
        return self.provenance.chain_dataset_hash(ds)

    def chain_model_record(self, model_id: str) -> dict[str, Any] | None:
        return self.provenance.chain_model_record(model_id)

    def chain_version_hash(self, mv: ModelVersion) -> tuple[str | None, str]:
        return self.provenance.chain_version_hash(mv)

    def recompute(self, bucket: str, key: str) -> Digests | None:
        return self.provenance.recompute(bucket, key)

    def verified_chunks(self, bucket: str, key: str, expected: str | None, what: str) -> Iterator[bytes]:
        return self.provenance.verified_chunks(bucket, key, expected, what)

    # --------------------------------------------------------------- writes
    def register_model(
        self, meta: ModelMetadata, created_by: str, package: tuple[str, Digests] | None = None
    ) -> Model:
        return self.intake.register_model(meta, created_by, package)

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
        return self.intake.version_from_file(
            model_id,
            kind,
            path,
            created_by=created_by,
            fmt=fmt,
            source_version=source_version,
            descriptor=descriptor,
            limit=limit,
        )


__all__ = ["Buckets", "Registry"]
