"""What the registry holds, as SQL rows: row states, bucket names and the read-only queries (datasets,
models and their ready versions). Writes go through :mod:`controller.registry.intake`."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from controller.db.models import Dataset, Model, ModelVersion
from controller.errors import Conflict, NotFound

PENDING, READY = "pending", "ready"
"""Row states of datasets and versions: reserved while the object streams in, then ready."""
REGISTERED, TRAINED = "registered", "trained"
"""Model states after ``pending``: on chain, and with a ready trained version."""


@dataclass(frozen=True)
class Buckets:
    """Bucket names (the seed's: datasets, models), optionally prefixed."""

    datasets: str
    models: str
    packages: str

    @classmethod
    def with_prefix(cls, prefix: str) -> Buckets:
        return cls(datasets=f"{prefix}datasets", models=f"{prefix}models", packages=f"{prefix}packages")


class Catalog:
    """Ready datasets, registered models and their ready versions (pending rows are invisible)."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

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
