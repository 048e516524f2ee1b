"""ArtifactStore: where dataset and model bytes live (local filesystem by default, or S3)."""

from controller.storage.base import ArtifactStore, ObjectInfo, ObjectNotFound, Readable, StorageError
from controller.storage.factory import make_store

__all__ = ["ArtifactStore", "ObjectInfo", "ObjectNotFound", "Readable", "StorageError", "make_store"]
