"""Start-up loads the in-process chain's state snapshot and replays only the journal's tail."""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path

import pytest

from controller.chain import evm, make_chain_backend
from controller.chain.evm import InProcessChainBackend
from controller.chain.factory import CHAIN_SUBDIR

ORG = "org-1"


def sha(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def open_evm(data_dir: Path) -> InProcessChainBackend:
    backend = make_chain_backend("evm", data_dir)
    assert isinstance(backend, InProcessChainBackend)
    return backend


def register(backend: InProcessChainBackend, *ids: str) -> None:
    for dataset_id in ids:
        backend.register_dataset(
            dataset_id, ORG, "(3,)", 10, sha(dataset_id), hashlib.md5(dataset_id.encode()).digest()
        )


def state_of(backend: InProcessChainBackend, ids: list[str]) -> tuple[object, ...]:
    head = backend._node.tester.backend.chain.get_canonical_head()
    return (head.state_root, head.block_number, tuple(backend.get_dataset(i) for i in ids))


def snapshot_path(data_dir: Path) -> Path:
    return data_dir / CHAIN_SUBDIR / evm.SNAPSHOT_FILE_NAME


def crash(backend: InProcessChainBackend) -> None:
    """Drop the backend without a clean close (no final snapshot), releasing only the journal's lock."""
    backend._node.journal.close()


def reopens_to(
    data_dir: Path,
    ids: list[str],
    expected: tuple[object, ...],
    caplog: pytest.LogCaptureFixture,
    *logged: str,
) -> None:
    """Open the chain in ``data_dir`` again: its state equals ``expected`` and the log says every phrase."""
    again = open_evm(data_dir)
    try:
        assert state_of(again, ids) == expected
        for phrase in logged:
            assert phrase in caplog.text, phrase
    finally:
        again.close()


@pytest.fixture(autouse=True)
def _snapshot_every_four(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(evm, "SNAPSHOT_EVERY", 4)


IDS = [f"ds-{i}" for i in range(5)]  # with the funding and registry transactions: 7 journaled


def test_restart_from_snapshot_equals_full_replay(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    first = open_evm(tmp_path)
    register(first, *IDS)
    before = state_of(first, IDS)
    first.close()  # a clean close snapshots all 7

    caplog.set_level(logging.INFO, logger="controller.chain.evm")
    second = open_evm(tmp_path)
    try:
        assert state_of(second, IDS) == before
        assert "(7 from the snapshot)" in caplog.text
        register(second, "after")  # the restored chain goes on mining
        after = state_of(second, [*IDS, "after"])
    finally:
        second.close()

    snapshot_path(tmp_path).unlink()
    caplog.clear()
    reopens_to(tmp_path, [*IDS, "after"], after, caplog, "(0 from the snapshot)")


def test_only_the_tail_after_the_snapshot_is_replayed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = open_evm(tmp_path)
    register(first, *IDS)  # the periodic snapshot covers 4 of the 7 transactions
    before = state_of(first, IDS)
    crash(first)

    caplog.set_level(logging.INFO, logger="controller.chain.evm")
    reopens_to(tmp_path, IDS, before, caplog, "replayed 7 chain transactions", "(4 from the snapshot)")


def test_corrupt_snapshot_is_ignored_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    first = open_evm(tmp_path)
    register(first, *IDS)
    before = state_of(first, IDS)
    first.close()
    path = snapshot_path(tmp_path)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))

    caplog.set_level(logging.INFO, logger="controller.chain")
    reopens_to(tmp_path, IDS, before, caplog, "body checksum mismatch", "(0 from the snapshot)")


def test_snapshot_of_another_history_is_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    other = open_evm(tmp_path / "other")
    register(other, "x-1", "x-2", "x-3", "x-4", "x-5")
    other.close()
    mine = open_evm(tmp_path / "mine")
    register(mine, *IDS)
    before = state_of(mine, IDS)
    crash(mine)
    shutil.copyfile(snapshot_path(tmp_path / "other"), snapshot_path(tmp_path / "mine"))

    caplog.set_level(logging.INFO, logger="controller.chain")
    reopens_to(tmp_path / "mine", IDS, before, caplog, "ignored")


def test_a_snapshot_that_cannot_be_written_only_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = open_evm(tmp_path)
    snapshot_path(tmp_path).mkdir()  # os.replace onto a directory fails
    caplog.set_level(logging.WARNING, logger="controller.chain")
    register(first, *IDS)  # the periodic snapshot fails; the journaled registrations do not
    before = state_of(first, IDS)
    first.close()
    assert "could not write chain snapshot" in caplog.text

    reopens_to(tmp_path, IDS, before, caplog)
