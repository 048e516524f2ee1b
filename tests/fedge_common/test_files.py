"""fedge_common.files: atomic replacement, permissions, and what a failure or a crash leaves behind."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fedge_common.files import atomic_write, atomic_writer, fsync_dir


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_write_creates_the_file_owner_only_by_default(tmp_path: Path) -> None:
    target = tmp_path / "key.pem"
    atomic_write(target, b"secret")
    assert target.read_bytes() == b"secret"
    assert mode_of(target) == 0o600
    assert os.listdir(tmp_path) == ["key.pem"]  # no temporary file left


def test_write_replaces_content_and_mode(tmp_path: Path) -> None:
    target = tmp_path / "ca.pem"
    target.write_bytes(b"old content that is longer")
    target.chmod(0o600)
    atomic_write(target, "new", mode=0o644)
    assert target.read_text() == "new"
    assert mode_of(target) == 0o644


def test_mode_is_exact_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        atomic_write(tmp_path / "public", b"x", mode=0o644)
    finally:
        os.umask(old)
    assert mode_of(tmp_path / "public") == 0o644


def test_mode_none_is_what_open_gives(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "plain", b"x", mode=None, fsync=False)
    finally:
        os.umask(old)
    assert mode_of(tmp_path / "plain") == 0o644


def test_replace_keeps_a_reader_on_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "pointer.json"
    target.write_text("old")
    with target.open() as reader:
        atomic_write(target, "new")
        assert reader.read() == "old"  # a new inode: open readers never see a half-written file
    assert target.read_text() == "new"


def test_error_in_the_block_leaves_the_old_content_and_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "model.onnx"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="source failed"), atomic_writer(target) as fh:
        fh.write(b"half of the new")
        raise RuntimeError("source failed")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["model.onnx"]


def test_streaming_writer_and_temp_prefix(tmp_path: Path) -> None:
    target = tmp_path / "object"
    with atomic_writer(target, mode=None, temp_prefix=".tmp-object-") as fh:
        fh.write(b"a")
        (temp,) = [p for p in tmp_path.iterdir() if p.name != "object"]
        assert temp.name.startswith(".tmp-object-")
        assert fh.name == str(temp)  # libraries that ask the file for its path (onnx.save) get the temp
        fh.write(b"b")
    assert target.read_bytes() == b"ab"
    assert not temp.exists()


def test_a_crash_mid_write_leaves_the_old_content(tmp_path: Path) -> None:
    """A process killed (os._exit: no cleanup, no finally) in the middle of a write."""
    target = tmp_path / "state.json"
    target.write_text('{"version": 1}')
    program = textwrap.dedent(
        f"""
        import os
        from fedge_common.files import atomic_writer
        with atomic_writer({str(target)!r}) as fh:
            fh.write(b'{{"version": 2, "half')
            fh.flush()
            os._exit(9)
        """
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", program], cwd=root, env={**os.environ, "PYTHONPATH": str(root)}
    )
    assert done.returncode == 9
    assert target.read_text() == '{"version": 1}'
    leftovers = [p.name for p in tmp_path.iterdir() if p != target]
    assert len(leftovers) == 1 and leftovers[0].startswith(".state.json.")  # a sweepable temp, not the target


def test_missing_directory_raises_and_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        atomic_write(tmp_path / "no-such-dir" / "file", b"x")
    assert not (tmp_path / "no-such-dir").exists()


def test_fsync_dir_accepts_a_directory(tmp_path: Path) -> None:
    fsync_dir(tmp_path)
    fsync_dir(str(tmp_path))
