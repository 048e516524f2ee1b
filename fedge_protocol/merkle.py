"""The FL audit's hashes, once for the controller and the device: update digests and their Merkle tree.

**Update digest** (:func:`update_digest`): SHA-256 over the canonical encoding of every ``ArrayRecord``
a train reply carries, exactly as it travelled (Flower's ``Array.data`` bytes, so a ciphertext when the
job aggregates under HE)::

    b"fedge-fl-update-v1\\x00" || u32(#records) || for each record, by key:
        str(key) || u32(#arrays) || for each array, by name:
            str(name) || str(dtype) || str(stype) || u32(#dims) || u64(dim)... || bytes(data)

where ``str(s)`` is ``u32(len) || utf-8`` and ``bytes(b)`` is ``u64(len) || b`` (big-endian integers).
Both ends compute it from the Flower message (duck-typed here: stdlib only).

**Merkle tree** (:class:`MerkleTree`) over one round's accepted update digests (RFC 6962 shape):

* leaves are the digests **sorted** ascending by their bytes (arrival order does not matter; equal
  digests stay as separate leaves); a participant's ``index`` is its digest's position in that order;
* domain separation: ``leaf = SHA-256(0x00 || digest)``, ``node = SHA-256(0x01 || left || right)``, so
  a leaf can never pass for an inner node;
* odd-node rule: the last node of a level with an odd count is **promoted** unchanged to the next level
  (never paired with a copy of itself, which would let two leaf sets share a root);
* a tree needs at least one leaf; the root of one leaf is that leaf's hash.

An inclusion proof is the list of sibling hashes from the leaf up; it is checked with the leaf's
``index`` and the tree's leaf ``count`` (which say at which levels the node was promoted).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Final, Protocol

__all__ = [
    "AUDIT_FAILED_CODE",
    "AUDIT_FAILED_REASON",
    "DIGEST_SIZE",
    "LEAF_PREFIX",
    "NODE_PREFIX",
    "UPDATE_DOMAIN",
    "AuditKey",
    "MerkleTree",
    "leaf_hash",
    "node_hash",
    "root_from_proof",
    "update_digest",
    "verify_proof",
]

DIGEST_SIZE: Final = 32
UPDATE_DOMAIN: Final = b"fedge-fl-update-v1\x00"
LEAF_PREFIX: Final = b"\x00"
NODE_PREFIX: Final = b"\x01"

#: ``Error.code`` of an evaluate (or later train) reply of a device whose audit check failed
AUDIT_FAILED_CODE: Final = 4032
#: first word of that error's ``reason`` (then ``": "`` and what did not verify)
AUDIT_FAILED_REASON: Final = "fedge:audit-failed"


class AuditKey:
    """Keys the ServerApp adds to a participant's evaluate ``ConfigRecord`` for the round just aggregated
    (plain strings; hashes as lowercase hex, the proof as a list of hex strings, leaf to root)."""

    ROUND: Final = "audit-round"
    ROOT: Final = "audit-root"  # the Merkle root of the round's accepted updates
    LEAF: Final = "audit-leaf"  # the update digest the server computed for this node ("" if none)
    INDEX: Final = "audit-index"
    COUNT: Final = "audit-count"
    PROOF: Final = "audit-proof"
    AGGREGATE: Final = "audit-aggregate"  # digest of the aggregate the round produced
    CHAIN_ROOT: Final = "audit-chain-root"  # the root as the controller read it back from the chain
    CHAIN_TX: Final = "audit-chain-tx"  # its transaction ("" when the controller did not confirm)
    CHAIN_REQUIRED: Final = "audit-chain-required"  # False only without a controller (simulation)


class _ArrayLike(Protocol):
    @property
    def dtype(self) -> str: ...

    @property
    def shape(self) -> Sequence[int] | tuple[int, ...]: ...

    @property
    def stype(self) -> str: ...

    @property
    def data(self) -> bytes: ...


def _str(value: str) -> bytes:
    raw = value.encode("utf-8")
    return struct.pack(">I", len(raw)) + raw


def update_digest(array_records: Mapping[str, Mapping[str, _ArrayLike]]) -> bytes:
    """SHA-256 of a train reply's ArrayRecords (``msg.content.array_records``), canonically encoded."""
    h = hashlib.sha256(UPDATE_DOMAIN)
    h.update(struct.pack(">I", len(array_records)))
    for key in sorted(array_records):
        record = array_records[key]
        h.update(_str(key))
        h.update(struct.pack(">I", len(record)))
        for name in sorted(record):
            array = record[name]
            shape = tuple(int(d) for d in array.shape)
            data = array.data if isinstance(array.data, bytes) else bytes(array.data)  # no copy of bytes
            h.update(_str(name) + _str(str(array.dtype)) + _str(str(array.stype)))
            h.update(struct.pack(f">I{len(shape)}Q", len(shape), *shape))
            h.update(struct.pack(">Q", len(data)))
            h.update(data)
    return h.digest()


def _digest(value: bytes) -> bytes:
    if not isinstance(value, bytes | bytearray) or len(value) != DIGEST_SIZE:
        raise ValueError(f"a digest is {DIGEST_SIZE} bytes")
    return bytes(value)


def leaf_hash(digest: bytes) -> bytes:
    """The tree's leaf for one update digest."""
    return hashlib.sha256(LEAF_PREFIX + _digest(digest)).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """An inner node over two children."""
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


class MerkleTree:
    """The tree over one round's update digests (sorted; see the module docstring)."""

    def __init__(self, digests: Iterable[bytes]) -> None:
        self.leaves: tuple[bytes, ...] = tuple(sorted(_digest(d) for d in digests))
        if not self.leaves:
            raise ValueError("a Merkle tree needs at least one leaf")
        level = [leaf_hash(d) for d in self.leaves]
        self._levels: list[list[bytes]] = [level]
        while len(level) > 1:
            nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
            if len(level) % 2:
                nxt.append(level[-1])  # odd node: promoted
            self._levels.append(nxt)
            level = nxt

    @property
    def root(self) -> bytes:
        return self._levels[-1][0]

    @property
    def count(self) -> int:
        return len(self.leaves)

    def index_of(self, digest: bytes) -> int | None:
        """The first leaf index holding ``digest``, or None when the update is not in the tree."""
        try:
            return self.leaves.index(_digest(digest))
        except ValueError:
            return None

    def proof(self, index: int) -> list[bytes]:
        """Sibling hashes from leaf ``index`` up to the root."""
        if not 0 <= index < self.count:
            raise IndexError(f"leaf index {index} outside 0..{self.count - 1}")
        path: list[bytes] = []
        for level in self._levels[:-1]:
            sibling = index ^ 1
            if sibling < len(level):
                path.append(level[sibling])
            index //= 2
        return path


def root_from_proof(digest: bytes, index: int, count: int, proof: Sequence[bytes]) -> bytes | None:
    """The root a proof leads to from ``digest`` at ``index`` of ``count`` leaves; None if the proof
    has the wrong length for that position or a malformed hash."""
    if isinstance(index, bool) or isinstance(count, bool) or not 0 <= index < count:
        return None
    try:
        node = leaf_hash(digest)
    except ValueError:
        return None
    steps = iter(proof)
    size = count
    while size > 1:
        sibling_index = index ^ 1
        if sibling_index < size:
            sibling = next(steps, None)
            if not isinstance(sibling, bytes | bytearray) or len(sibling) != DIGEST_SIZE:
                return None
            node = node_hash(bytes(sibling), node) if index & 1 else node_hash(node, bytes(sibling))
        index //= 2
        size = (size + 1) // 2
    if next(steps, None) is not None:
        return None  # a longer proof than the position allows
    return node


def verify_proof(digest: bytes, index: int, count: int, proof: Sequence[bytes], root: bytes) -> bool:
    """Whether ``digest`` is leaf ``index`` of a ``count``-leaf tree with this ``root``."""
    return root_from_proof(digest, index, count, proof) == bytes(root)
