"""Start-up reconciliation: repair what a crash between two steps of a write left behind.

Rows still ``pending`` after the grace period lose their object and row; objects older than the grace
period that no row references are deleted, and multipart uploads a killed writer never completed are
aborted (their parts are otherwise kept by S3 for ever, invisible to listings). The grace period protects
uploads in flight on another replica. (A chain record cannot be deleted; one without a row is harmless,
keyed by an unused UUID.)
"""

from __future__ import annotations

import datetime as dt
import logging

from sqlalchemy import select

from controller.db.models import Dataset, Model, ModelVersion, utcnow
from controller.observability.events import counted_reconcile
from controller.registry.catalog import PENDING
from controller.registry.intake import Intake

log = logging.getLogger("fedge.registry")


@counted_reconcile
def reconcile(intake: Intake, grace_seconds: int) -> dict[str, int]:
    """Remove stale pending rows (with their objects) and unreferenced old objects; counts by kind."""
    sessions, store, buckets = intake.sessions, intake.store, intake.buckets
    cutoff = utcnow() - dt.timedelta(seconds=grace_seconds)
    removed = {
        "pending_datasets": 0,
        "pending_versions": 0,
        "pending_models": 0,
        "orphan_objects": 0,
        "incomplete_uploads": 0,
    }
    with sessions() as s:
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
        intake.discard_dataset(ds)
        removed["pending_datasets"] += 1
    for mv in stale_mv:
        intake.discard_version(mv)
        removed["pending_versions"] += 1
    for m in stale_models:
        intake.discard_model(m.id)
        removed["pending_models"] += 1
    with sessions() as s:
        known_ds = set(s.scalars(select(Dataset.object_key)).all())
        known_mv = set(s.scalars(select(ModelVersion.object_key)).all())
        known_pkg = {str((t or {}).get("package_key")) for t in s.scalars(select(Model.training)).all()}
    for bucket, known in (
        (buckets.datasets, known_ds),
        (buckets.models, known_mv),
        (buckets.packages, known_pkg),
    ):
        for obj in list(store.list(bucket)):
            if obj.key not in known and obj.modified <= cutoff.timestamp():
                store.delete(bucket, obj.key)
                removed["orphan_objects"] += 1
        removed["incomplete_uploads"] += store.abort_incomplete_uploads(bucket, cutoff.timestamp())
    if any(removed.values()):
        log.warning("start-up reconciliation removed %s", removed)
    return removed
