"""Provenance: what the chain records about each artifact, and reads of stored objects checked against
it (integrity on read).

The process keeps one bounded cache of chain facts (:class:`ChainFacts`): version hashes once read
(a chain record never changes once written) and the objects already hashed in full against them.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from controller.chain.errors import RecordNotFound
from controller.db.models import Dataset, ModelVersion
from controller.errors import IntegrityCheckFailed, ServiceUnavailable
from controller.registry.chain_problems import map_chain_errors
from controller.registry.hashing import Digests, IntegrityError, hash_chunks, iter_verified
from controller.storage.base import ArtifactStore, ObjectNotFound, StorageError

if TYPE_CHECKING:
    from controller.chain.base import ChainBackend

log = logging.getLogger("fedge.registry")


class ChainFacts:
    """A bounded, thread-safe LRU of facts learnt from the chain, keyed by what they are about:

    ``("version", model_id, version)`` -> (sha256 on chain, record holding it)
    ``("object", bucket, key)``        -> (store change token, sha256 the object was hashed against)
    """

    SIZE = 4096

    def __init__(self, size: int = SIZE) -> None:
        self.size = size
        self._items: OrderedDict[tuple[str, str, str], tuple[str, str]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str, str]) -> tuple[str, str] | None:
        with self._lock:
            return self._items.get(key)

    def put(self, key: tuple[str, str, str], value: tuple[str, str]) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def forget(self, key: tuple[str, str, str]) -> None:
        with self._lock:
            self._items.pop(key, None)


class Provenance:
    """Chain reads of dataset, model and version records; stored objects recomputed or streamed
    against them."""

    def __init__(self, store: ArtifactStore, chain: ChainBackend, facts: ChainFacts | None = None) -> None:
        self.store = store
        self.chain = chain
        self.facts = facts or ChainFacts()

    # ------------------------------------------------------------ chain reads
    def chain_dataset_hash(self, ds: Dataset) -> tuple[str | None, dict[str, Any] | None]:
        """(SHA-256 hex on chain, decoded record) for a dataset; (None, None) if there is no record."""
        with map_chain_errors("read the dataset record"):
            try:
                rec = self.chain.get_dataset(ds.id)
            except RecordNotFound:
                return None, None
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
        with map_chain_errors("read the model record"):
            try:
                rec = self.chain.get_model(model_id)
            except RecordNotFound:
                return None
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
        """(SHA-256 hex on chain, which record holds it) for a model version, read from the chain."""
        with map_chain_errors("read the artifact record"):
            try:
                art = self.chain.get_artifact(mv.model_id, mv.version)
                return art.sha256.hex(), "artifact"
            except RecordNotFound:
                pass
        if mv.kind == "trained":
            record = self.chain_model_record(mv.model_id)
            if record and record["res_hash"]:
                return str(record["res_hash"]), "model.verify"
        return None, "none"

    def cached_version_hash(self, mv: ModelVersion) -> tuple[str | None, str]:
        """:meth:`chain_version_hash` read from the chain once per version (a record never changes once
        written); a version without a record is asked again next time."""
        key = ("version", mv.model_id, str(mv.version))
        known = self.facts.get(key)
        if known is not None:
            return known
        sha, record = self.chain_version_hash(mv)
        if sha is not None:
            self.facts.put(key, (sha, record))
        return sha, record

    # ---------------------------------------------------------- stored objects
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
        fact = ("object", bucket, key)
        if not token or self.facts.get(fact) != (token, expected):
            self._check_stored(bucket, key, expected, what)
            if token:
                self.facts.put(fact, (token, expected))
        return self._forget_on_mismatch(fact, iter_verified(self.open_object(bucket, key), expected))

    def _forget_on_mismatch(self, fact: tuple[str, str, str], chunks: Iterator[bytes]) -> Iterator[bytes]:
        try:
            yield from chunks
        except IntegrityError:
            self.facts.forget(fact)
            raise

    def _check_stored(self, bucket: str, key: str, expected: str, what: str) -> None:
        """Hash the whole stored object; IntegrityCheckFailed (409) unless it matches ``expected``."""
        actual = self.recompute(bucket, key)
        if actual is None:
            raise IntegrityCheckFailed(f"{what}: stored object is missing")
        if actual.sha256 != expected:
            self.facts.forget(("object", bucket, key))
            log.error("integrity check failed for %s: stored %s, chain %s", what, actual.sha256, expected)
            raise IntegrityCheckFailed(
                f"{what}: stored object's sha256 {actual.sha256} differs from the chain record {expected}",
                sha256_stored=actual.sha256,
                sha256_chain=expected,
            )
