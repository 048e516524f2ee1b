"""Append-only journal of the in-process chain's signed transactions.

The in-process EVM keeps its state in memory; the journal makes it durable. Every mined transaction is
appended (and fsynced) before its receipt is returned, with the block timestamp it was mined at, so a
replay on start rebuilds the same contract addresses, the same records and the same timestamps.

File format: one line per entry, `<compact JSON> <crc32 hex>\\n`. The first line is the header.
A torn or corrupt *final* line (a crash mid-write) is dropped with a warning and cut off the file;
a corrupt line anywhere else means the file was damaged and is refused (JournalError).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from controller.chain.errors import JournalError
from fedge_common.files import fsync_dir

log = logging.getLogger(__name__)

JOURNAL_FORMAT = 1
JOURNAL_KIND = "fedge-evm-journal"


@dataclass(frozen=True)
class JournalHeader:
    chain_id: int
    genesis_timestamp: int
    fork: str

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": JOURNAL_KIND,
            "format": JOURNAL_FORMAT,
            "chain_id": self.chain_id,
            "genesis_timestamp": self.genesis_timestamp,
            "fork": self.fork,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> JournalHeader:
        if obj.get("kind") != JOURNAL_KIND or obj.get("format") != JOURNAL_FORMAT:
            raise ValueError(f"not a {JOURNAL_KIND} v{JOURNAL_FORMAT} header")
        return cls(int(obj["chain_id"]), int(obj["genesis_timestamp"]), str(obj["fork"]))


@dataclass(frozen=True)
class JournalEntry:
    """One mined transaction: the raw signed bytes and what mining it produced."""

    raw: bytes
    timestamp: int  # block timestamp it was mined at
    tx_hash: str
    block_number: int
    status: int
    contract_address: str | None = None
    label: str | None = None  # "fund", "registry", ... for transactions the backend itself needs

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "raw": "0x" + self.raw.hex(),
            "ts": self.timestamp,
            "hash": self.tx_hash,
            "block": self.block_number,
            "status": self.status,
        }
        if self.contract_address is not None:
            obj["contract"] = self.contract_address
        if self.label is not None:
            obj["label"] = self.label
        return obj

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> JournalEntry:
        return cls(
            raw=bytes.fromhex(str(obj["raw"]).removeprefix("0x")),
            timestamp=int(obj["ts"]),
            tx_hash=str(obj["hash"]),
            block_number=int(obj["block"]),
            status=int(obj["status"]),
            contract_address=obj.get("contract"),
            label=obj.get("label"),
        )


def encode_line(obj: dict[str, Any]) -> bytes:
    payload = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return f"{payload} {zlib.crc32(payload.encode('utf-8')):08x}\n".encode()


def decode_line(line: bytes) -> dict[str, Any]:
    """Parse one line (without its newline); ValueError if torn or corrupt."""
    text = line.decode("utf-8")
    payload, _, crc = text.rpartition(" ")
    if not payload or crc != f"{zlib.crc32(payload.encode('utf-8')):08x}":
        raise ValueError("checksum mismatch")
    obj = json.loads(payload)
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    return obj


class TxJournal:
    """An open journal file, locked against other writers (flock) until close()."""

    def __init__(self, path: Path, header: JournalHeader, entries: list[JournalEntry], fh: BinaryIO) -> None:
        self.path = path
        self.header = header
        self.entries = entries
        self._fh: BinaryIO | None = fh

    @classmethod
    def open(cls, path: Path, new_header: JournalHeader) -> TxJournal:
        """Open (or create with `new_header`) the journal and read its entries, repairing a torn tail."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        fh = os.fdopen(fd, "r+b", buffering=0)
        try:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise JournalError(
                    f"journal {path} is in use by another backend (another controller process on the "
                    "same data directory?)"
                ) from None
            header, entries = cls._read(path, fh)
            if header is None:
                header = new_header
                fh.seek(0)
                fh.truncate()
                fh.write(encode_line(header.to_json()))
                os.fsync(fh.fileno())
                fsync_dir(path.parent)
            return cls(path, header, entries, fh)
        except BaseException:
            fh.close()
            raise

    @staticmethod
    def _read(path: Path, fh: BinaryIO) -> tuple[JournalHeader | None, list[JournalEntry]]:
        fh.seek(0)
        data = fh.read()
        pieces = data.split(b"\n")
        torn = pieces.pop()  # b"" when the file ends with a newline, else a last line cut short
        if torn:
            pieces.append(torn)
        good_end = 0  # byte offset just past the last good line
        header: JournalHeader | None = None
        entries: list[JournalEntry] = []
        for number, line in enumerate(pieces, start=1):
            final = number == len(pieces)
            try:
                if final and torn:
                    raise ValueError(f"truncated, {len(torn)} bytes without a newline")
                obj = decode_line(line)
                if header is None:
                    header = JournalHeader.from_json(obj)
                else:
                    entries.append(JournalEntry.from_json(obj))
            except (ValueError, KeyError, TypeError) as exc:
                if not final:
                    raise JournalError(
                        f"journal {path} line {number} is corrupt ({exc}) and is not the last line; refusing "
                        "to replay a damaged history. Restore the file from a backup."
                    ) from None
                log.warning("chain journal %s: ignoring corrupt final line %d (%s)", path, number, exc)
                break
            good_end += len(line) + 1
        if good_end != len(data):
            fh.truncate(good_end)
            os.fsync(fh.fileno())
        return header, entries

    def append(self, entry: JournalEntry) -> None:
        """Append one entry durably (write + fsync) before the caller reports success."""
        fh = self._require_open()
        fh.seek(0, os.SEEK_END)
        fh.write(encode_line(entry.to_json()))
        os.fsync(fh.fileno())
        self.entries.append(entry)

    def close(self) -> None:
        if self._fh is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None

    def _require_open(self) -> BinaryIO:
        if self._fh is None:
            raise JournalError(f"journal {self.path} is closed")
        return self._fh
