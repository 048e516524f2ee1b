"""Version allocation: the next version number of a model, reserved as a ``pending`` row before its
artifact is stored. Concurrent writers race on the unique (model, version) key; the loser takes the
next number."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError as SqlIntegrityError
from sqlalchemy.orm import Session, sessionmaker

from controller.db.models import ModelVersion, new_id
from controller.errors import Conflict, Unprocessable
from controller.registry.catalog import PENDING, Catalog

VERSION_KINDS = ("trained", "onnx", "quantized")
ATTEMPTS = 5


def reserve_version(
    sessions: sessionmaker[Session],
    catalog: Catalog,
    bucket: str,
    model_id: str,
    kind: str,
    created_by: str,
    fmt: str | None,
    source_version: int | None,
) -> ModelVersion:
    """Reserve the next version number of ``model_id`` (row ``pending``, a fresh object key in
    ``bucket``). 404 for an unknown model, 422 for an unknown kind or source version."""
    if kind not in VERSION_KINDS:
        raise Unprocessable(f"kind must be one of {', '.join(VERSION_KINDS)}", field="kind")
    model = catalog.get_model(model_id)
    if source_version is not None and all(v.version != source_version for v in catalog.ready_versions(model)):
        raise Unprocessable(f"model {model_id} has no version {source_version}", field="source_version")

    def add(s: Session, number: int) -> ModelVersion:
        mv = ModelVersion(
            model_id=model_id,
            version=number,
            kind=kind,
            status=PENDING,
            format=fmt,
            bucket=bucket,
            object_key=new_id(),
            source_version=source_version,
            created_by=created_by,
        )
        s.add(mv)
        return mv

    return _with_next_number(sessions, model_id, add)


def skip_spent_version(sessions: sessionmaker[Session], mv: ModelVersion) -> None:
    """Move the pending ``mv`` to the next free version number: its number is already on chain (an
    earlier upload recorded it, then its SQL commit failed, so no row holds it) and chain records are
    written once. The skipped number stays a gap: numbering continues above the highest row."""

    def move(s: Session, number: int) -> ModelVersion:
        row = s.get(ModelVersion, mv.id)
        if row is None or row.status != PENDING:
            raise Conflict(f"model {mv.model_id} version {mv.version} changed during upload; retry")
        row.version = number  # above mv's own number: the highest row is at least mv's
        return row

    mv.version = _with_next_number(sessions, mv.model_id, move).version


def _with_next_number(
    sessions: sessionmaker[Session], model_id: str, use: Callable[[Session, int], ModelVersion]
) -> ModelVersion:
    """``use(session, highest + 1)`` in one transaction; on a unique-key race, again with the next."""
    for _attempt in range(ATTEMPTS):
        try:
            with sessions.begin() as s:
                highest = select(func.max(ModelVersion.version)).where(ModelVersion.model_id == model_id)
                top = s.scalar(highest)
                mv = use(s, (top or 0) + 1)
            return mv
        except SqlIntegrityError:
            continue  # another writer took that number; try the next
    raise Conflict(f"could not allocate a version for model {model_id}; retry")
