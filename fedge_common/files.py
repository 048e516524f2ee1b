"""Atomic file replacement: readers see the old content or the new one, never a half-written file.

The new content goes to a temporary file in the target's directory (same file system, so the rename is
atomic), which is flushed and fsynced, given its mode, renamed over the target with ``os.replace``, and
the directory is fsynced so that the rename itself survives a crash. If writing fails, the temporary
file is removed and the target is left as it was.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

PathLike = str | os.PathLike[str]


def fsync_dir(path: PathLike) -> None:
    """Flush a directory's entries (a rename, a new or removed file in it) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_writer(
    path: PathLike, *, mode: int | None = 0o600, fsync: bool = True, temp_prefix: str | None = None
) -> Iterator[BinaryIO]:
    """Yield a binary file whose content replaces ``path`` when the block ends without an exception.

    ``mode``: the file's permission bits, exactly (default 0600: owner only); ``None`` keeps what a plain
    ``open`` would give (0666 minus the umask). ``fsync=False`` skips both fsyncs (still atomic for
    readers, not across a power loss). ``temp_prefix`` names the temporary file (default ``.<name>.``),
    e.g. so that a start-up sweep can find the ones a crash left behind.
    """
    target = Path(path)
    prefix = temp_prefix if temp_prefix is not None else f".{target.name}."
    tmp = target.with_name(f"{prefix}{uuid.uuid4().hex}.tmp")
    permissions = 0o666 if mode is None else mode
    # "x": a new file (O_EXCL), created with `permissions` minus the umask; fh.name is its path
    fh = open(tmp, "xb", opener=lambda p, flags: os.open(p, flags, permissions))  # noqa: SIM115
    try:
        with fh:
            if mode is not None:
                os.fchmod(fh.fileno(), mode)  # exactly `mode`, whatever the umask
            yield fh
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if fsync:
        fsync_dir(target.parent)


def atomic_write(path: PathLike, data: bytes | str, *, mode: int | None = 0o600, fsync: bool = True) -> None:
    """Replace ``path`` with ``data`` (str is written as UTF-8) atomically; see :func:`atomic_writer`."""
    with atomic_writer(path, mode=mode, fsync=fsync) as fh:
        fh.write(data.encode("utf-8") if isinstance(data, str) else data)
