"""One ArtifactStore conformance suite, run against every implementation (local FS, real S3)."""

from __future__ import annotations

import hashlib
import io
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.storage.base import ArtifactStore, ObjectNotFound
from controller.storage.local import LocalArtifactStore
from controller.storage.s3 import S3ArtifactStore


class ExplodingReader:
    """Yields some bytes, then fails like a dropped client would."""

    def __init__(self, good: bytes) -> None:
        self.buf = io.BytesIO(good)

    def read(self, n: int = -1, /) -> bytes:
        data = self.buf.read(n)
        if not data:
            raise ConnectionError("client went away")
        return data


class ArtifactStoreConformance:
    """Subclasses provide ``store`` and ``bucket`` fixtures."""

    def test_put_then_read_back_identical_bytes(self, store: ArtifactStore, bucket: str) -> None:
        data = os.urandom(300_000)
        key = str(uuid.uuid4())
        written = store.put(bucket, key, io.BytesIO(data))
        assert written == len(data)
        assert store.read_all(bucket, key) == data
        assert store.stat(bucket, key).size == len(data)

    def test_change_token_is_stable_and_changes_when_the_bytes_are_rewritten(
        self, store: ArtifactStore, bucket: str
    ) -> None:
        key = str(uuid.uuid4())
        store.put(bucket, key, io.BytesIO(b"first version"))
        token = store.stat(bucket, key).token
        assert token and store.stat(bucket, key).token == token
        assert [o.token for o in store.list(bucket) if o.key == key] == [token]

        store.put(bucket, key, io.BytesIO(b"other version"))  # same size, other bytes

        assert store.stat(bucket, key).token not in ("", token)

    def test_large_object_streams_in_chunks(self, store: ArtifactStore, bucket: str) -> None:
        data = os.urandom(20 * 1024 * 1024 + 17)  # > one S3 multipart part
        key = str(uuid.uuid4())
        store.put(bucket, key, io.BytesIO(data))
        chunks = list(store.open(bucket, key, chunk_size=1024 * 1024))
        assert len(chunks) > 1
        assert hashlib.sha256(b"".join(chunks)).digest() == hashlib.sha256(data).digest()

    def test_failed_put_leaves_no_object(self, store: ArtifactStore, bucket: str) -> None:
        key = str(uuid.uuid4())
        with pytest.raises(ConnectionError):
            store.put(bucket, key, ExplodingReader(os.urandom(100_000)))
        assert not store.exists(bucket, key)
        assert key not in {o.key for o in store.list(bucket)}

    def test_missing_object_raises_not_found(self, store: ArtifactStore, bucket: str) -> None:
        key = str(uuid.uuid4())
        with pytest.raises(ObjectNotFound):
            store.stat(bucket, key)
        with pytest.raises(ObjectNotFound):
            list(store.open(bucket, key))

    def test_delete_is_idempotent(self, store: ArtifactStore, bucket: str) -> None:
        key = str(uuid.uuid4())
        store.put(bucket, key, io.BytesIO(b"abc"))
        store.delete(bucket, key)
        store.delete(bucket, key)
        assert not store.exists(bucket, key)

    def test_list_shows_stored_objects_with_sizes(self, store: ArtifactStore, bucket: str) -> None:
        keys = {str(uuid.uuid4()): os.urandom(n) for n in (1, 10, 1000)}
        for key, data in keys.items():
            store.put(bucket, key, io.BytesIO(data))
        listed = {o.key: o.size for o in store.list(bucket)}
        for key, data in keys.items():
            assert listed[key] == len(data)

    @pytest.mark.parametrize("key", ["../escape", "a/b", "", "..", "x" * 300])
    def test_unsafe_keys_are_refused(self, store: ArtifactStore, bucket: str, key: str) -> None:
        with pytest.raises(ValueError):
            store.put(bucket, key, io.BytesIO(b"x"))

    def test_empty_object(self, store: ArtifactStore, bucket: str) -> None:
        key = str(uuid.uuid4())
        assert store.put(bucket, key, io.BytesIO(b"")) == 0
        assert store.read_all(bucket, key) == b""

    def test_health_passes_on_working_store(self, store: ArtifactStore) -> None:
        store.health()

    def test_a_presigned_url_serves_exactly_the_object_or_there_is_none(
        self, store: ArtifactStore, bucket: str
    ) -> None:
        key = str(uuid.uuid4())
        store.put(bucket, key, io.BytesIO(b"presigned bytes"))
        url = store.presigned_get(bucket, key)
        if url is None:  # this store streams through the controller
            return
        import httpx

        assert httpx.get(url).content == b"presigned bytes"
        assert httpx.get(url.split("?")[0]).status_code == 403


class TestLocalStore(ArtifactStoreConformance):
    @pytest.fixture
    def store(self, tmp_path: Path) -> ArtifactStore:
        return LocalArtifactStore(tmp_path / "objects")

    @pytest.fixture
    def bucket(self, store: ArtifactStore) -> str:
        store.ensure_bucket("datasets")
        return "datasets"

    def test_change_token_sees_a_rewrite_that_restores_the_mtime(
        self, store: LocalArtifactStore, bucket: str
    ) -> None:
        store.put(bucket, "k", io.BytesIO(b"original"))
        path = store.root / bucket / "k"
        before = path.stat()
        token = store.stat(bucket, "k").token
        time.sleep(0.05)  # file timestamps tick coarsely (jiffies): let the clock move past the put
        path.write_bytes(b"tampered")  # in place: same inode, same size
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))

        assert path.stat().st_mtime_ns == before.st_mtime_ns
        assert store.stat(bucket, "k").token != token

    def test_no_temp_files_survive_a_failed_write(self, store: LocalArtifactStore, bucket: str) -> None:
        with pytest.raises(ConnectionError):
            store.put(bucket, str(uuid.uuid4()), ExplodingReader(b"x" * 10))
        assert list((store.root / bucket).iterdir()) == []

    def test_stale_temp_files_removed_at_start(self, tmp_path: Path) -> None:
        root = tmp_path / "objects"
        (root / "models").mkdir(parents=True)
        (root / "models" / ".tmp-abc-123").write_bytes(b"half")
        LocalArtifactStore(root)
        assert not (root / "models" / ".tmp-abc-123").exists()


class TestS3Store(ArtifactStoreConformance):
    @pytest.fixture
    def store(self, s3_server) -> ArtifactStore:  # type: ignore[no-untyped-def]
        return S3ArtifactStore(
            s3_server.endpoint, s3_server.access_key, s3_server.secret_key, secure=False, presign=True
        )

    @pytest.fixture
    def bucket(self, store: ArtifactStore) -> Iterator[str]:
        name = f"conf-{uuid.uuid4().hex[:12]}"
        store.ensure_bucket(name)
        yield name
        for obj in list(store.list(name)):
            store.delete(name, obj.key)

    def test_presigning_is_off_unless_asked_for(self, s3_server) -> None:  # type: ignore[no-untyped-def]
        plain = S3ArtifactStore(s3_server.endpoint, s3_server.access_key, s3_server.secret_key, secure=False)
        assert plain.presigned_get("models", "k") is None

    def test_wrong_secret_is_refused(self, s3_server) -> None:  # type: ignore[no-untyped-def]
        from controller.storage.base import StorageError

        bad = S3ArtifactStore(s3_server.endpoint, s3_server.access_key, "wrong-secret", secure=False)
        with pytest.raises(StorageError):
            bad.health()
