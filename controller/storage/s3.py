"""S3 ArtifactStore through the ``minio`` SDK (MinIO, SeaweedFS, AWS S3...)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import timedelta
from typing import BinaryIO, cast

import urllib3
from minio import Minio
from minio.error import S3Error

from controller.storage.base import (
    CHUNK_SIZE,
    ArtifactStore,
    ObjectInfo,
    ObjectNotFound,
    Readable,
    StorageError,
    check_bucket,
    check_key,
)

PART_SIZE = 16 * 1024 * 1024
_MISSING = {"NoSuchKey", "NoSuchObject", "NoSuchBucket", "ResourceNotFound"}


class S3ArtifactStore(ArtifactStore):
    """Objects in S3 buckets. Uploads of unknown length use multipart (aborted by the SDK on failure)."""

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        secure: bool = True,
        region: str = "us-east-1",
        *,
        presign: bool = False,
        public_endpoint: str | None = None,
        presign_seconds: int = 300,
    ) -> None:
        self.client = Minio(
            endpoint, access_key=access_key, secret_key=secret_key, secure=secure, region=region
        )
        self.endpoint = endpoint
        # Presigned URLs are signed for the address devices use; with the region given, signing needs no
        # request to S3 (the SDK would otherwise ask the endpoint for its region).
        self._signer: Minio | None = (
            Minio(
                public_endpoint or endpoint,
                access_key=access_key,
                secret_key=secret_key,
                secure=secure,
                region=region,
            )
            if presign
            else None
        )
        self.presign_seconds = presign_seconds

    def _fail(self, what: str, exc: Exception) -> StorageError:
        if isinstance(exc, S3Error) and exc.code in _MISSING:
            return ObjectNotFound(what)
        return StorageError(f"S3 {what}: {exc}")

    def ensure_bucket(self, bucket: str) -> None:
        check_bucket(bucket)
        try:
            if not self.client.bucket_exists(bucket):
                self.client.make_bucket(bucket)
        except S3Error as exc:
            if exc.code not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                raise self._fail(f"make bucket {bucket}", exc) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise StorageError(f"S3 endpoint {self.endpoint} unreachable: {exc}") from exc

    def put(
        self, bucket: str, key: str, source: Readable, content_type: str = "application/octet-stream"
    ) -> int:
        check_bucket(bucket)
        check_key(key)
        counter = _CountingReader(source)
        try:
            self.client.put_object(
                bucket,
                key,
                cast(BinaryIO, counter),
                length=-1,
                part_size=PART_SIZE,
                content_type=content_type,
            )
        except BaseException as exc:
            self._discard(bucket, key)
            if counter.error is not None:  # the source failed: pass its error on unchanged
                raise counter.error from None
            if isinstance(exc, S3Error | urllib3.exceptions.HTTPError | OSError):
                raise StorageError(f"S3 upload of {bucket}/{key} failed: {exc}") from exc
            raise
        return counter.count

    def abort_incomplete_uploads(self, bucket: str, started_before: float) -> int:
        """Abort the multipart uploads begun before ``started_before`` and never completed: a writer killed
        mid-upload (``kill -9``, power loss) leaves their parts in the bucket, invisible to ``list`` and
        kept for ever. Uses S3's ListMultipartUploads / AbortMultipartUpload (the SDK keeps them private)."""
        check_bucket(bucket)
        aborted = 0
        key_marker: str | None = None
        upload_marker: str | None = None
        try:
            while True:
                page = self.client._list_multipart_uploads(  # the SDK has no public listing
                    bucket, key_marker=key_marker, upload_id_marker=upload_marker
                )
                for upload in page.uploads:
                    started = upload.initiated_time
                    if started is not None and started.timestamp() >= started_before:
                        continue  # may still be in flight (another replica)
                    self.client._abort_multipart_upload(bucket, upload.object_name, str(upload.upload_id))
                    aborted += 1
                if not page.is_truncated:
                    return aborted
                key_marker, upload_marker = page.next_key_marker, page.next_upload_id_marker
        except (S3Error, urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._fail(f"listing incomplete uploads in {bucket}", exc) from exc

    def _discard(self, bucket: str, key: str) -> None:
        with contextlib.suppress(Exception):  # best effort; the object may never have been created
            self.client.remove_object(bucket, key)

    def open(self, bucket: str, key: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        check_bucket(bucket)
        check_key(key)
        try:
            resp = self.client.get_object(bucket, key)
        except S3Error as exc:
            raise self._fail(f"{bucket}/{key}", exc) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise StorageError(f"S3 endpoint {self.endpoint} unreachable: {exc}") from exc
        return self._iter(resp, chunk_size)

    @staticmethod
    def _iter(resp: urllib3.BaseHTTPResponse, chunk_size: int) -> Iterator[bytes]:
        try:
            yield from resp.stream(chunk_size)
        finally:
            resp.close()
            resp.release_conn()

    def presigned_get(self, bucket: str, key: str) -> str | None:
        if self._signer is None:
            return None
        check_bucket(bucket)
        check_key(key)
        try:
            return self._signer.presigned_get_object(
                bucket, key, expires=timedelta(seconds=self.presign_seconds)
            )
        except (S3Error, ValueError) as exc:
            raise self._fail(f"presign {bucket}/{key}", exc) from exc

    def stat(self, bucket: str, key: str) -> ObjectInfo:
        try:
            st = self.client.stat_object(check_bucket(bucket), check_key(key))
        except S3Error as exc:
            raise self._fail(f"{bucket}/{key}", exc) from exc
        modified = st.last_modified.timestamp() if st.last_modified else 0.0
        token = f"{st.etag}:{st.version_id or ''}:{modified}" if st.etag else ""
        return ObjectInfo(key=key, size=int(st.size or 0), modified=modified, token=token)

    def delete(self, bucket: str, key: str) -> None:
        try:
            self.client.remove_object(check_bucket(bucket), check_key(key))
        except S3Error as exc:
            if exc.code not in _MISSING:
                raise self._fail(f"delete {bucket}/{key}", exc) from exc

    def list(self, bucket: str) -> Iterator[ObjectInfo]:
        try:
            for obj in self.client.list_objects(check_bucket(bucket), recursive=True):
                if obj.object_name is None:
                    continue
                modified = obj.last_modified.timestamp() if obj.last_modified else 0.0
                token = f"{obj.etag}:{obj.version_id or ''}:{modified}" if obj.etag else ""
                yield ObjectInfo(key=obj.object_name, size=int(obj.size or 0), modified=modified, token=token)
        except S3Error as exc:
            if exc.code == "NoSuchBucket":
                return
            raise self._fail(f"list {bucket}", exc) from exc

    def health(self) -> None:
        try:
            self.client.list_buckets()
        except (S3Error, urllib3.exceptions.HTTPError, OSError) as exc:
            raise StorageError(f"S3 endpoint {self.endpoint} not usable: {exc}") from exc


class _CountingReader:
    """Counts what the SDK reads from the source."""

    def __init__(self, source: Readable) -> None:
        self.source = source
        self.count = 0
        self.error: BaseException | None = None

    def read(self, n: int = -1, /) -> bytes:
        try:
            data = self.source.read(n)
        except BaseException as exc:
            self.error = exc
            raise
        self.count += len(data)
        return data
