"""Pick the ArtifactStore named by the settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

from controller.storage.base import ArtifactStore

if TYPE_CHECKING:
    from controller.config import ControllerSettings


def make_store(settings: ControllerSettings) -> ArtifactStore:
    """Local filesystem under ``data_dir/objects`` by default; S3 when configured."""
    if settings.storage_backend == "s3":
        from controller.storage.s3 import S3ArtifactStore

        assert settings.s3_endpoint and settings.s3_access_key and settings.s3_secret_key
        return S3ArtifactStore(
            settings.s3_endpoint,
            settings.s3_access_key,
            settings.s3_secret_key.get_secret_value(),
            secure=settings.s3_secure,
            region=settings.s3_region,
            presign=settings.s3_presigned_downloads,
            public_endpoint=settings.s3_public_endpoint,
            presign_seconds=settings.s3_presign_seconds,
        )
    from controller.storage.local import LocalArtifactStore

    return LocalArtifactStore(settings.data_dir / "objects")
