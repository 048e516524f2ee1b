"""The FL audit's Merkle tree and update digest (fedge_protocol.merkle)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from fedge_protocol.merkle import (
    MerkleTree,
    leaf_hash,
    node_hash,
    root_from_proof,
    update_digest,
    verify_proof,
)


def digests(n: int, salt: str = "") -> list[bytes]:
    return [hashlib.sha256(f"{salt}update-{i}".encode()).digest() for i in range(n)]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 8, 9, 10, 33])
def test_every_leaf_proof_verifies_for_any_count(n: int) -> None:
    tree = MerkleTree(digests(n))
    for index, leaf in enumerate(tree.leaves):
        proof = tree.proof(index)
        assert verify_proof(leaf, index, n, proof, tree.root)
        assert len(proof) <= max(1, (n - 1).bit_length())


def test_one_leaf_root_is_its_leaf_hash_and_the_proof_is_empty() -> None:
    (d,) = digests(1)
    tree = MerkleTree([d])
    assert tree.root == leaf_hash(d) and tree.proof(0) == []
    assert verify_proof(d, 0, 1, [], tree.root)


def test_three_leaves_promote_the_odd_node() -> None:
    a, b, c = sorted(digests(3))
    tree = MerkleTree([c, a, b])  # order given does not matter: sorted
    assert tree.root == node_hash(node_hash(leaf_hash(a), leaf_hash(b)), leaf_hash(c))
    assert tree.proof(2) == [node_hash(leaf_hash(a), leaf_hash(b))]


def test_leaf_and_node_hashes_are_domain_separated() -> None:
    a, b = digests(2)
    assert leaf_hash(a) != hashlib.sha256(a).digest()
    # an inner node's preimage (64 bytes) cannot be presented as a leaf: leaves are 32-byte digests,
    # and the prefixes differ even for the same bytes
    assert node_hash(a, b) != hashlib.sha256(b"\x00" + a + b).digest()
    with pytest.raises(ValueError):
        leaf_hash(a + b)


def test_a_wrong_leaf_fails() -> None:
    tree = MerkleTree(digests(5))
    outsider = digests(1, salt="other")[0]
    assert not verify_proof(outsider, 1, 5, tree.proof(1), tree.root)
    assert tree.index_of(outsider) is None


def test_a_wrong_index_fails() -> None:
    tree = MerkleTree(digests(6))
    leaf, proof = tree.leaves[2], tree.proof(2)
    for index in (0, 1, 3, 4, 5, 6, -1):
        assert not verify_proof(leaf, index, 6, proof, tree.root), index


def test_a_wrong_count_fails() -> None:
    tree = MerkleTree(digests(5))
    leaf, proof = tree.leaves[4], tree.proof(4)
    assert verify_proof(leaf, 4, 5, proof, tree.root)
    assert not verify_proof(leaf, 4, 6, proof, tree.root)


def test_a_tampered_sibling_fails() -> None:
    tree = MerkleTree(digests(7))
    proof = tree.proof(3)
    for position in range(len(proof)):
        bad = list(proof)
        bad[position] = bytes([bad[position][0] ^ 1]) + bad[position][1:]
        assert not verify_proof(tree.leaves[3], 3, 7, bad, tree.root)


def test_a_proof_too_short_too_long_or_malformed_fails() -> None:
    tree = MerkleTree(digests(8))
    proof = tree.proof(5)
    assert root_from_proof(tree.leaves[5], 5, 8, proof[:-1]) is None
    assert root_from_proof(tree.leaves[5], 5, 8, [*proof, proof[0]]) is None
    assert root_from_proof(tree.leaves[5], 5, 8, [proof[0][:31], *proof[1:]]) is None
    assert root_from_proof(b"short", 5, 8, proof) is None


def test_an_empty_tree_is_refused() -> None:
    with pytest.raises(ValueError):
        MerkleTree([])


def test_duplicate_digests_stay_separate_leaves() -> None:
    a, b = digests(2)
    assert MerkleTree([a, a, b]).count == 3
    assert MerkleTree([a, a, b]).root != MerkleTree([a, b]).root


def _record(seed: int) -> ArrayRecord:
    rng = np.random.default_rng(seed)
    return ArrayRecord({"w": Array(rng.normal(size=(3, 4)).astype(np.float32)),
                        "b": Array(np.zeros(4, np.float32))})  # fmt: skip


def test_update_digest_is_the_same_after_transport_and_changes_with_any_byte() -> None:
    from flwr.common.serde import array_from_proto, array_to_proto

    record = _record(0)
    carried = ArrayRecord({n: array_from_proto(array_to_proto(a)) for n, a in record.items()})
    assert update_digest({"arrays": record}) == update_digest({"arrays": carried})
    assert update_digest({"arrays": record}) != update_digest({"arrays": _record(1)})
    changed = record["w"].numpy().copy()
    changed[0, 0] = np.nextafter(changed[0, 0], np.float32(10))
    tampered = ArrayRecord({"w": Array(changed), "b": record["b"]})
    assert update_digest({"arrays": record}) != update_digest({"arrays": tampered})
    # the record key and the array names are part of it
    assert update_digest({"arrays": record}) != update_digest({"other": record})
    renamed = ArrayRecord({"w2": record["w"], "b": record["b"]})
    assert update_digest({"arrays": record}) != update_digest({"arrays": renamed})


@dataclass(frozen=True)
class _Raw:
    dtype: str
    shape: tuple[int, ...]
    stype: str
    data: bytes


def test_update_digest_encodes_shape_and_lengths_unambiguously() -> None:
    one = {"r": {"a": _Raw("float32", (2, 2), "x", b"\x00" * 16)}}
    other = {"r": {"a": _Raw("float32", (4,), "x", b"\x00" * 16)}}
    assert update_digest(one) != update_digest(other)
    split = {"r": {"a": _Raw("u8", (1,), "x", b"ab"), "b": _Raw("u8", (1,), "x", b"c")}}
    moved = {"r": {"a": _Raw("u8", (1,), "x", b"a"), "b": _Raw("u8", (1,), "x", b"bc")}}
    assert update_digest(split) != update_digest(moved)
    assert len(update_digest(one)) == 32
