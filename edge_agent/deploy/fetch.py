"""One verified fetch for everything the agent downloads by a signed chain hash (models to deploy, grid
policies named by a command): download -> SHA-256 while streaming -> compare with the signed hash ->
stage. The bytes are hashed once, as they arrive; a file lands at its destination only when its hash
matches, otherwise it is deleted and refused.

A download that fails for a passing reason (the link dropped, the server answered 5xx or 429: the error's
``transient`` attribute, set by ``edge_agent.link.client.LinkError``) is tried again after a short pause,
``len(RETRY_DELAYS)`` times, before it counts as refused: a connection the controller closed while the
request went out must not roll a whole rollout back. A hash mismatch, a 4xx and a disk error are final.

A file that is already on the device (an installed slot going back into service) had no stream to hash:
:func:`verify_file` hashes it again, with the same comparison and the same message.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Protocol

from edge_agent.deploy.slots import sha256_file

log = logging.getLogger(__name__)

RETRY_DELAYS: tuple[float, ...] = (0.5, 2.0)
"""Pauses before the second and third try of a download that failed for a passing reason."""


class Fetcher(Protocol):
    """What downloads an artifact: streams ``path`` into ``dest`` and returns the SHA-256 of the bytes
    it wrote (``ControllerLink.download``)."""

    def download(self, path: str, dest: Path) -> str: ...


class ArtifactRefused(Exception):
    """The artifact cannot be used: it could not be downloaded, or it is not the signed one."""


class DownloadFailed(ArtifactRefused):
    """The link or the disk failed during the download."""


class DigestMismatch(ArtifactRefused):
    """The bytes hash differently from the SHA-256 the signed document names (read from the chain)."""

    def __init__(self, actual: str | None, expected: str) -> None:
        super().__init__(f"sha256 {actual} of the artifact differs from the signed chain record {expected}")
        self.actual, self.expected = actual, expected


def check_digest(actual: str | None, expected: str) -> None:
    """Raise :class:`DigestMismatch` unless ``actual`` (None: no file) is the signed ``expected``."""
    if actual != expected:
        raise DigestMismatch(actual, expected)


def fetch_verified(fetcher: Fetcher, url: str, expected_sha256: str, dest: Path) -> str:
    """Download ``url`` into ``dest`` via ``dest.part``, hashed while streaming; ``dest`` appears only
    when the hash is ``expected_sha256``. Returns that hash. Raises :class:`DownloadFailed` or
    :class:`DigestMismatch` (nothing is left behind)."""
    part = dest.with_name(f"{dest.name}.part")
    for attempt in range(len(RETRY_DELAYS) + 1):
        try:
            actual = fetcher.download(url, part)
            break
        except Exception as exc:  # link and disk errors alike: the caller keeps what it had
            part.unlink(missing_ok=True)
            if attempt == len(RETRY_DELAYS) or not getattr(exc, "transient", False):
                raise DownloadFailed(f"download failed: {exc}") from exc
            log.info("download of %s failed (%s); trying again in %.1f s", url, exc, RETRY_DELAYS[attempt])
            time.sleep(RETRY_DELAYS[attempt])
    try:
        check_digest(actual, expected_sha256)
    except DigestMismatch:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, dest)
    return actual


def verify_file(path: Path, expected_sha256: str) -> None:
    """Hash a file already on the device and compare it with the signed hash (a missing file fails)."""
    check_digest(sha256_file(path) if path.exists() else None, expected_sha256)
