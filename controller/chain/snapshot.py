"""Snapshots of the in-process chain's state, so a start replays only the journal's tail.

A snapshot is the whole key-value store of the py-evm chain (account trie, code, storage, headers,
blocks, transactions, receipts and the canonical-chain index: everything eth-tester reads back, logs
included) taken after the first `offset` journal entries, written atomically next to the journal.

File format: one JSON header line, then the body: for each key/value pair a big-endian uint32 key
length, uint32 value length, key, value. The header carries the body's SHA-256 and a digest of the
journaled transaction hashes it covers; a snapshot whose body, chain or covered history does not match
is ignored with a warning (the caller then replays the whole journal).
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.chain.journal import JournalEntry, JournalHeader
from fedge_common.files import atomic_writer

log = logging.getLogger(__name__)

SNAPSHOT_FORMAT = 1
SNAPSHOT_KIND = "fedge-evm-snapshot"
_PAIR = struct.Struct(">II")


def journal_digest(entries: Iterable[JournalEntry]) -> str:
    """SHA-256 over the transaction hashes of `entries`, in order: which history a snapshot covers."""
    digest = hashlib.sha256()
    for entry in entries:
        digest.update(entry.tx_hash.encode("ascii"))
        digest.update(b"\n")
    return digest.hexdigest()


@dataclass(frozen=True)
class Snapshot:
    offset: int  # journal entries applied
    head_number: int
    head_hash: str
    state_root: str
    kv: dict[bytes, bytes]


def write_snapshot(
    path: Path,
    header: JournalHeader,
    entries: Sequence[JournalEntry],
    kv: Mapping[bytes, bytes],
    *,
    head_number: int,
    head_hash: str,
    state_root: str,
) -> int:
    """Write the snapshot after `entries` atomically; returns its size in bytes."""
    body = bytearray()
    for key, value in kv.items():
        body += _PAIR.pack(len(key), len(value))
        body += key
        body += value
    meta = {
        "kind": SNAPSHOT_KIND,
        "format": SNAPSHOT_FORMAT,
        "chain_id": header.chain_id,
        "genesis_timestamp": header.genesis_timestamp,
        "offset": len(entries),
        "journal_digest": journal_digest(entries),
        "head_number": head_number,
        "head_hash": head_hash,
        "state_root": state_root,
        "body_sha256": hashlib.sha256(body).hexdigest(),
        "body_len": len(body),
        "pairs": len(kv),
    }
    line = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    with atomic_writer(path) as fh:
        fh.write(line)
        fh.write(body)
    return len(line) + len(body)


def read_snapshot(path: Path, header: JournalHeader, entries: Sequence[JournalEntry]) -> Snapshot | None:
    """The snapshot at `path` if it is intact and covers a prefix of `entries`; else None (warned)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("chain snapshot %s unreadable (%s): replaying the whole journal", path, exc)
        return None
    try:
        return _parse(data, header, entries)
    except (ValueError, KeyError, TypeError, struct.error) as exc:
        log.warning("chain snapshot %s ignored (%s): replaying the whole journal", path, exc)
        return None


def _parse(data: bytes, header: JournalHeader, entries: Sequence[JournalEntry]) -> Snapshot:
    newline = data.find(b"\n")
    if newline < 0:
        raise ValueError("no header line")
    meta: dict[str, Any] = json.loads(data[:newline])
    if (
        not isinstance(meta, dict)
        or meta.get("kind") != SNAPSHOT_KIND
        or meta.get("format") != SNAPSHOT_FORMAT
    ):
        raise ValueError(f"not a {SNAPSHOT_KIND} v{SNAPSHOT_FORMAT} file")
    if (int(meta["chain_id"]), int(meta["genesis_timestamp"])) != (header.chain_id, header.genesis_timestamp):
        raise ValueError("taken on another chain (chain id or genesis timestamp differ from the journal's)")
    offset = int(meta["offset"])
    if not 0 < offset <= len(entries):
        raise ValueError(f"covers {offset} transactions, the journal holds {len(entries)}")
    if journal_digest(entries[:offset]) != meta["journal_digest"]:
        raise ValueError(f"the journal's first {offset} transactions are not the ones it was taken after")
    body = memoryview(data)[newline + 1 :]
    if len(body) != int(meta["body_len"]) or hashlib.sha256(body).hexdigest() != meta["body_sha256"]:
        raise ValueError("body checksum mismatch")
    kv: dict[bytes, bytes] = {}
    pos, end = 0, len(body)
    while pos < end:
        klen, vlen = _PAIR.unpack_from(body, pos)
        pos += _PAIR.size
        if pos + klen + vlen > end:
            raise ValueError("body truncated")
        kv[bytes(body[pos : pos + klen])] = bytes(body[pos + klen : pos + klen + vlen])
        pos += klen + vlen
    if len(kv) != int(meta["pairs"]):
        raise ValueError("pair count mismatch")
    return Snapshot(
        offset=offset,
        head_number=int(meta["head_number"]),
        head_hash=str(meta["head_hash"]),
        state_root=str(meta["state_root"]),
        kv=kv,
    )
