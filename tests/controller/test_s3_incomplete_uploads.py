"""A writer killed (SIGKILL) in the middle of an S3 multipart upload leaves parts that no listing shows and
S3 keeps for ever; the controller's start-up reconciliation aborts them (real SeaweedFS, a real kill)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from controller.state import build_state
from controller.storage.s3 import S3ArtifactStore
from tests.conftest import SettingsFactory

pytestmark = pytest.mark.s3

_WRITER = textwrap.dedent(
    """
    import sys, time
    from controller.storage.s3 import S3ArtifactStore

    endpoint, access, secret, bucket, key = sys.argv[1:6]

    class Endless:  # more than one part, then it stalls: the upload is in flight when the kill comes
        sent = 0
        def read(self, n=-1):
            if self.sent >= 40 * 1024 * 1024:
                time.sleep(3600)
            size = 1024 * 1024 if n is None or n < 0 else min(n, 1024 * 1024)
            chunk = b"\\x07" * size
            self.sent += len(chunk)
            return chunk

    S3ArtifactStore(endpoint, access, secret, secure=False).put(bucket, key, Endless())
    """
)


def _incomplete(store: S3ArtifactStore, bucket: str) -> list[str]:
    return [u.object_name for u in store.client._list_multipart_uploads(bucket).uploads]


def test_killed_upload_is_aborted_by_reconciliation(
    s3_server,
    make_settings: SettingsFactory,
    postgres_db_url: str,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    settings = make_settings(
        database_url=postgres_db_url,
        **s3_server.controller_settings(),
        pending_grace_seconds=3600,
    )
    state = build_state(settings)
    bucket = state.registry.buckets.models
    store = state.store
    assert isinstance(store, S3ArtifactStore)
    state.close()

    key = str(uuid.uuid4())
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _WRITER,
            s3_server.endpoint,
            s3_server.access_key,
            s3_server.secret_key,
            bucket,
            key,
        ],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    try:
        deadline = time.monotonic() + 120
        while key not in _incomplete(store, bucket):
            assert writer.poll() is None, "the writer exited before its upload began"
            assert time.monotonic() < deadline, "no multipart upload appeared"
            time.sleep(0.2)
        time.sleep(1.0)  # let a part land
    finally:
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
    assert key in _incomplete(store, bucket)
    assert all(o.key != key for o in store.list(bucket))  # invisible to listings: only the upload knows

    # within the grace period another replica may still be writing it: kept
    again = build_state(settings)
    again.close()
    assert key in _incomplete(store, bucket)

    # past the grace period: aborted at start-up
    recovered = build_state(settings.model_copy(update={"pending_grace_seconds": 0}))
    recovered.close()
    assert key not in _incomplete(store, bucket)


def test_abort_incomplete_uploads_spares_recent_ones(s3_server) -> None:  # type: ignore[no-untyped-def]
    store = S3ArtifactStore(s3_server.endpoint, s3_server.access_key, s3_server.secret_key, secure=False)
    bucket = f"conf-{uuid.uuid4().hex[:12]}"
    store.ensure_bucket(bucket)
    upload_id = store.client._create_multipart_upload(bucket, "k", {})
    assert store.abort_incomplete_uploads(bucket, time.time() - 3600) == 0
    assert _incomplete(store, bucket) == ["k"]
    assert store.abort_incomplete_uploads(bucket, time.time() + 60) == 1
    assert _incomplete(store, bucket) == []
    assert upload_id
