"""The in-process chain survives restarts by replaying its journal of signed transactions."""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from controller.chain import JournalError, RecordNotFound, make_chain_backend
from controller.chain.evm import JOURNAL_FILE_NAME, InProcessChainBackend
from controller.chain.factory import CHAIN_SUBDIR

ROOT = Path(__file__).resolve().parents[3]
ORG = "org-1"


def sha(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def journal_path(data_dir: Path) -> Path:
    return data_dir / CHAIN_SUBDIR / JOURNAL_FILE_NAME


def open_evm(data_dir: Path) -> InProcessChainBackend:
    backend = make_chain_backend("evm", data_dir)
    assert isinstance(backend, InProcessChainBackend)
    return backend


def register(backend: InProcessChainBackend, dataset_id: str) -> None:
    backend.register_dataset(
        dataset_id, ORG, "(3,)", 10, sha(dataset_id), hashlib.md5(dataset_id.encode()).digest()
    )


def test_new_instance_on_same_dir_reads_identical_records(tmp_path: Path) -> None:
    first = open_evm(tmp_path)
    register(first, "ds-1")
    first.register_model("m-1", ORG, "dev", "ds-1", sha("img"))
    first.verify_model("m-1", sha("result"))
    seed_contract = first.seed_contracts.deploy(
        "model",
        {"model_id": "m-2", "organization_id": ORG, "developer_id": "dev", "dataset_id": "ds-1",
         "train_image_hash": sha("img")},
    ).contract_address  # fmt: skip
    before = (first.registry_address, first.get_dataset("ds-1"), first.get_model("m-1"))
    described = first.seed_contracts.describe(seed_contract)
    first.close()

    second = open_evm(tmp_path)
    try:
        assert (second.registry_address, second.get_dataset("ds-1"), second.get_model("m-1")) == before
        assert second.seed_contracts.describe(seed_contract) == described
    finally:
        second.close()


def test_writes_after_restart_continue_the_same_chain(tmp_path: Path) -> None:
    first = open_evm(tmp_path)
    register(first, "ds-1")
    block = first.register_model("m-1", ORG, "dev", "ds-1", sha("img")).block_number
    first.close()
    second = open_evm(tmp_path)
    try:
        receipt = second.verify_model("m-1", sha("result"))
        assert receipt.block_number == block + 1
        assert second.get_model("m-1").verified is True
    finally:
        second.close()


def test_restart_in_a_new_process_reads_the_same_records(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import hashlib, json, sys
        from pathlib import Path
        from controller.chain import make_chain_backend
        backend = make_chain_backend("evm", Path({str(tmp_path)!r}))
        if sys.argv[1] == "write":
            sha = hashlib.sha256(b"data").digest()
            backend.register_dataset("ds-proc", "org", "(1,)", 7, sha, hashlib.md5(b"data").digest())
            backend.register_model("m-proc", "org", "dev", "ds-proc", hashlib.sha256(b"img").digest())
            backend.verify_model("m-proc", hashlib.sha256(b"result").digest())
        d, m = backend.get_dataset("ds-proc"), backend.get_model("m-proc")
        print(json.dumps({{"registry": backend.registry_address, "controller": backend.controller_address,
                          "dataset": [d.sha256.hex(), d.size_bytes, d.registered_at],
                          "model": [m.result_hash.hex(), m.verified_at]}}))
        backend.close()
        """
    )

    def run(mode: str) -> dict[str, object]:
        done = subprocess.run(
            [sys.executable, "-c", script, mode], cwd=ROOT, capture_output=True, text=True, timeout=120,
            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
        return result

    written = run("write")
    assert run("read") == written


def test_torn_final_line_is_dropped_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    backend = open_evm(tmp_path)
    register(backend, "ds-kept")
    register(backend, "ds-torn")
    backend.close()
    path = journal_path(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:-40])  # a crash in the middle of writing the last line

    with caplog.at_level(logging.WARNING, logger="controller.chain.journal"):
        reopened = open_evm(tmp_path)
    try:
        assert any("ignoring corrupt final line" in r.getMessage() for r in caplog.records)
        assert reopened.get_dataset("ds-kept").sha256 == sha("ds-kept")
        with pytest.raises(RecordNotFound):
            reopened.get_dataset("ds-torn")
        assert path.read_bytes() == data[: data.rstrip(b"\n").rfind(b"\n") + 1]
        register(reopened, "ds-torn")  # the id is free again, and the journal keeps growing cleanly
    finally:
        reopened.close()
    again = open_evm(tmp_path)
    try:
        assert again.get_dataset("ds-torn").sha256 == sha("ds-torn")
    finally:
        again.close()


def test_garbled_final_line_is_dropped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    backend = open_evm(tmp_path)
    register(backend, "ds-kept")
    backend.close()
    path = journal_path(tmp_path)
    with path.open("ab") as fh:
        fh.write(b'{"raw":"0xdeadbeef","ts":1} 00000000\n')

    with caplog.at_level(logging.WARNING, logger="controller.chain.journal"):
        reopened = open_evm(tmp_path)
    try:
        assert [r.levelno for r in caplog.records if "final line" in r.getMessage()] == [logging.WARNING]
        assert reopened.get_dataset("ds-kept").size_bytes == 10
    finally:
        reopened.close()


def test_corrupt_line_before_the_end_raises_journal_error(tmp_path: Path) -> None:
    backend = open_evm(tmp_path)
    register(backend, "ds-1")
    register(backend, "ds-2")
    backend.close()
    path = journal_path(tmp_path)
    lines = path.read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b'"status":1', b'"status":0')  # checksum no longer matches
    path.write_bytes(b"".join(lines))

    with pytest.raises(JournalError, match="line 3 is corrupt"):
        open_evm(tmp_path)


def test_journal_that_does_not_replay_raises_journal_error(tmp_path: Path) -> None:
    backend = open_evm(tmp_path)
    register(backend, "ds-1")
    backend.close()
    path = journal_path(tmp_path)
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join([*lines, lines[-1]]))  # the same signed transaction twice: nonce reused

    with pytest.raises(JournalError, match=f"line {len(lines) + 1} .* does not replay"):
        open_evm(tmp_path)


def test_second_backend_on_an_open_data_dir_is_refused(tmp_path: Path) -> None:
    backend = open_evm(tmp_path)
    try:
        with pytest.raises(JournalError, match="in use"):
            open_evm(tmp_path)
    finally:
        backend.close()


def test_journal_records_timestamps_so_replay_keeps_them(tmp_path: Path) -> None:
    backend = open_evm(tmp_path)
    register(backend, "ds-1")
    registered_at = backend.get_dataset("ds-1").registered_at
    backend.close()
    entries = [json.loads(line.rsplit(" ", 1)[0]) for line in journal_path(tmp_path).read_text().splitlines()]
    assert entries[0]["kind"] == "fedge-evm-journal"
    assert [e.get("label") for e in entries[1:]] == ["fund", "registry", None]
    assert entries[-1]["ts"] == registered_at
