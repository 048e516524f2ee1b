"""A training package is checked when it is registered, not when its first job runs: it must be a .zip /
wheel or a .tar(.gz/.bz2/.xz) archive, not empty, with only safe member paths (no absolute paths, no '..',
no links or devices). The object is read back from the store in chunks (spooled to disk past 8 MiB)."""

from __future__ import annotations

import tarfile
import tempfile
import zipfile
from collections.abc import Iterable
from pathlib import PurePosixPath

from controller.errors import Unprocessable

FIELD = "training_package"
_SPOOL_BYTES = 8 * 1024 * 1024


def _unsafe(name: str) -> bool:
    path = PurePosixPath(name.replace("\\", "/"))
    return path.is_absolute() or ".." in path.parts or name.startswith(("/", "\\")) or ":" in path.parts[0]


def check_package(chunks: Iterable[bytes]) -> list[str]:
    """The member names of a valid training package; a 422 problem on ``training_package`` otherwise."""
    with tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES) as spool:
        for chunk in chunks:
            spool.write(chunk)
        spool.seek(0)
        head = spool.read(4)
        spool.seek(0)
        if head == b"PK\x03\x04":
            try:
                with zipfile.ZipFile(spool) as zf:
                    names = [i.filename for i in zf.infolist() if not i.is_dir()]
                    bad = zf.testzip()
            except (zipfile.BadZipFile, ValueError, OSError) as exc:
                raise Unprocessable(
                    f"the training package is not a readable .zip: {exc}", field=FIELD
                ) from exc
            if bad is not None:
                raise Unprocessable(f"the training package's member {bad!r} is corrupt", field=FIELD)
        else:
            try:
                with tarfile.open(fileobj=spool, mode="r:*") as tf:
                    members = tf.getmembers()
            except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
                raise Unprocessable(
                    "the training package is not a .tar.gz / .tar / .zip / wheel archive "
                    f"({exc}); pack the training directory with `tar czf pkg.tar.gz -C DIR .`",
                    field=FIELD,
                ) from exc
            for m in members:
                if not (m.isfile() or m.isdir()):
                    raise Unprocessable(
                        f"the training package's member {m.name!r} is a link or device; only files and "
                        "directories are allowed",
                        field=FIELD,
                    )
            names = [m.name for m in members if m.isfile()]
    unsafe = [n for n in names if _unsafe(n)]
    if unsafe:
        raise Unprocessable(f"the training package has an unsafe member path {unsafe[0]!r}", field=FIELD)
    if not names:
        raise Unprocessable("the training package contains no file", field=FIELD)
    return names
