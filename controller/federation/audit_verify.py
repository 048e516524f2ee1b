"""Verify an FL job's audit document (``GET /v1/fl/jobs/{id}/audit``) from its records alone.

Used by ``fedge fl audit JOB`` and importable without the server's dependencies (pydantic schemas and
:mod:`fedge_protocol.merkle` only). See docs/fl-audit.md for what is checked.
"""

from __future__ import annotations

import re

from controller.schemas.fl_audit import FlAuditOut
from fedge_protocol.merkle import MerkleTree, verify_proof

__all__ = ["AuditMismatch", "verify_audit"]

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class AuditMismatch(Exception):
    """The audit records do not agree; the message is the one-line reason."""


def _hex(value: str | None, what: str) -> bytes:
    if value is None or not _HEX64.match(value):
        raise AuditMismatch(f"{what} is not a SHA-256 hex digest: {value!r}")
    return bytes.fromhex(value)


def verify_audit(doc: FlAuditOut) -> list[str]:
    """Check an audit document from its records alone; one line per verified round (and the lineage).

    For every round: the on-chain record exists; the leaves are the sorted digests at indexes 0..n-1; they
    hash to the on-chain root (recomputed, the stored root is not trusted); every leaf's proof leads to
    it; count and aggregate hash agree; no participant disputes it. Then the final model: the last
    round's aggregate is the digest of the registered version's parameters, and the run's on-chain final
    hash is that version's SHA-256. Raises AuditMismatch with the first disagreement."""
    if doc.not_audited and not doc.rounds:
        raise AuditMismatch(f"job {doc.job_id} is not audited per round: {doc.not_audited}")
    if doc.status == "succeeded" and not doc.rounds:
        raise AuditMismatch(f"job {doc.job_id} succeeded but no round is recorded on chain")
    lines: list[str] = []
    previous = 0
    for rnd in doc.rounds:
        r = rnd.round
        if r <= previous:
            raise AuditMismatch(f"round {r} is listed after round {previous}")
        previous = r
        if rnd.chain is None:
            raise AuditMismatch(f"round {r}: no on-chain record ({rnd.chain_error or 'missing'})")
        chain_root = _hex(rnd.chain.updates_root, f"round {r}: the on-chain root")
        digests = [_hex(leaf.digest, f"round {r}: leaf {leaf.index}") for leaf in rnd.leaves]
        if [leaf.index for leaf in rnd.leaves] != list(range(len(rnd.leaves))):
            raise AuditMismatch(f"round {r}: the leaf indexes are not 0..{len(rnd.leaves) - 1}")
        if digests != sorted(digests):
            raise AuditMismatch(f"round {r}: the leaves are not in sorted order")
        if not digests:
            raise AuditMismatch(f"round {r}: no leaves")
        root = MerkleTree(digests).root
        if root != chain_root:
            raise AuditMismatch(
                f"round {r}: the {len(digests)} leaves hash to root {root.hex()}, "
                f"the chain holds {chain_root.hex()}"
            )
        for leaf, digest in zip(rnd.leaves, digests, strict=True):
            proof = [_hex(h, f"round {r}: leaf {leaf.index}'s proof") for h in leaf.proof]
            if not verify_proof(digest, leaf.index, len(digests), proof, chain_root):
                raise AuditMismatch(
                    f"round {r}: the proof of leaf {leaf.index} ({leaf.device_id}) does not verify"
                )
        if rnd.chain.update_count != len(digests) or rnd.update_count != len(digests):
            raise AuditMismatch(
                f"round {r}: {len(digests)} leaves, the chain counts {rnd.chain.update_count} updates"
            )
        if rnd.chain.aggregate_hash != rnd.aggregate_hash:
            raise AuditMismatch(
                f"round {r}: aggregate {rnd.aggregate_hash} differs from the chain's "
                f"{rnd.chain.aggregate_hash}"
            )
        if rnd.disputes:
            d = rnd.disputes[0]
            raise AuditMismatch(
                f"round {r}: device {d.device_id or d.node_id} disputes its inclusion: {d.reason}"
            )
        lines.append(
            f"round {r}: {len(digests)} updates, root {chain_root.hex()[:16]}... on chain, proofs verify"
        )
    final = doc.final
    if final is not None and doc.rounds:
        last = doc.rounds[-1]
        assert last.chain is not None
        if final.lineage_applicable and final.aggregate_hash is None:
            raise AuditMismatch(
                f"version {final.version} of {final.model_id} names no final aggregate digest"
            )
        if final.lineage_applicable and final.aggregate_hash != last.chain.aggregate_hash:
            raise AuditMismatch(
                f"the final parameters' digest {final.aggregate_hash} is not round {last.round}'s on-chain "
                f"aggregate {last.chain.aggregate_hash}"
            )
        if final.chain_final_model_hash is None:
            raise AuditMismatch(f"the run's on-chain record is missing ({final.chain_error})")
        if final.chain_final_model_hash != final.sha256:
            raise AuditMismatch(
                f"the run's on-chain final model hash {final.chain_final_model_hash} is not version "
                f"{final.version}'s sha256 {final.sha256}"
            )
        lineage = (
            f"parameters = round {last.round}'s aggregate"
            if final.lineage_applicable
            else "aggregate lineage not applicable (HE ciphertext sums)"
        )
        lines.append(
            f"model {final.model_id} v{final.version}: {lineage}, "
            f"sha256 {final.sha256[:16]}... = the run's on-chain final hash"
        )
    return lines
