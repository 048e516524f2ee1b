"""Every FL round on chain, on the controller: record each round's Merkle root, serve the audit, verify it.

The ServerApp (:mod:`controller.federation.round_audit`) reports, with each train round, the digest of
every accepted update (:func:`fedge_protocol.merkle.update_digest`) and of the aggregate.
:class:`AuditTrail` rebuilds the tree from those digests (refusing a report whose root does not match),
records ``(root, aggregate hash, update count)`` on chain in one transaction (``record_fl_round``,
write-once per run and round), reads it back, and keeps the leaves with who sent each in
``fl_audit_rounds``. The report route answers the ServerApp with the root as read back from the chain, which
the ServerApp hands to each participant with its inclusion proof (the device checks it,
:mod:`edge_agent.learning.audit`).

``GET /v1/fl/jobs/{id}/audit`` (:meth:`AuditTrail.audit`) returns every round: the stored leaves and
proofs, and, read from the chain at request time, the on-chain record; plus the final model's lineage.
:func:`controller.federation.audit_verify.verify_audit` (``fedge fl audit JOB``) checks the whole document
from the records alone.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from controller.chain.errors import ChainError, RecordExists, RecordNotFound
from controller.db.models import FlAuditRound, FlJob, FlParticipant, ModelVersion
from controller.errors import NotFound, ServiceUnavailable, Unprocessable
from controller.schemas.fl_audit import (
    FlAuditChainRecord,
    FlAuditDispute,
    FlAuditFinal,
    FlAuditLeaf,
    FlAuditOut,
    FlAuditRoundOut,
)
from fedge_protocol.merkle import MerkleTree

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from controller.chain.base import ChainBackend

__all__ = ["FINAL_AGGREGATE_KEY", "AuditTrail", "audit_lineage_exempt"]

log = logging.getLogger("fedge.federation.audit")

#: key of the registered version's descriptor holding the digest of the final parameters
FINAL_AGGREGATE_KEY = "fl_final_aggregate"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
MAX_LEAVES = 100_000


def audit_lineage_exempt(job: FlJob) -> bool:
    """Whether the job's last aggregate is not its final parameters (HE: the server adds ciphertexts)."""
    he = (job.privacy or {}).get("he")
    return isinstance(he, dict) and bool(he.get("enabled", False))


def _digest(value: object, field: str) -> bytes:
    if not isinstance(value, str) or not _HEX64.match(value):
        raise Unprocessable(f"{field} must be 64 lowercase hex characters", field=field)
    return bytes.fromhex(value)


class AuditTrail:
    """The controller's side of the FL audit (one per FlJobManager)."""

    def __init__(self, sessions: sessionmaker[Session], chain: ChainBackend) -> None:
        self.sessions = sessions
        self.chain = chain

    # ---------------------------------------------------------------- recording
    def record_round(self, job_id: str, server_round: int, audit: Mapping[str, Any]) -> None:
        """Check a train report's ``audit``, record its root on chain (once) and store the leaves."""
        leaves = audit.get("leaves")
        if not isinstance(leaves, list) or not 1 <= len(leaves) <= MAX_LEAVES:
            raise Unprocessable(f"audit.leaves must list 1..{MAX_LEAVES} updates", field="audit.leaves")
        digests, nodes = [], []
        for n, leaf in enumerate(leaves):
            if not isinstance(leaf, Mapping):
                raise Unprocessable("audit.leaves holds objects", field=f"audit.leaves[{n}]")
            digests.append(_digest(leaf.get("digest"), f"audit.leaves[{n}].digest"))
            nodes.append(str(leaf.get("node_id")))
        aggregate = _digest(audit.get("aggregate"), "audit.aggregate")
        tree = MerkleTree(digests)
        if audit.get("root") != tree.root.hex():
            raise Unprocessable(
                f"audit.root {audit.get('root')} is not the root of the leaves ({tree.root.hex()})",
                field="audit.root",
            )
        with self.sessions() as s:
            parts = {
                p.node_id: p.device_id
                for p in s.scalars(select(FlParticipant).where(FlParticipant.job_id == job_id))
            }
            existing = s.scalar(
                select(FlAuditRound).where(FlAuditRound.job_id == job_id, FlAuditRound.round == server_round)
            )
        unknown = sorted({n for n in nodes if n not in parts})
        if unknown:
            raise Unprocessable(f"audit leaves from nodes {unknown} that are not participants", field="audit")
        if existing is not None:
            if existing.updates_root != tree.root.hex():
                raise Unprocessable(
                    f"round {server_round} is already recorded with root {existing.updates_root}",
                    field="round",
                )
            return  # a retried report
        by_digest: dict[bytes, list[str]] = {}
        for digest, node in zip(digests, nodes, strict=True):
            by_digest.setdefault(digest, []).append(node)
        rows = []
        for index, digest in enumerate(tree.leaves):
            node = by_digest[digest].pop(0)
            rows.append({"index": index, "digest": digest.hex(), "node_id": node, "device_id": parts[node]})
        try:
            try:
                receipt = self.chain.record_fl_round(job_id, server_round, tree.root, aggregate, tree.count)
                tx_hash, block = receipt.tx_hash, receipt.block_number
            except RecordExists:  # recorded before a crash lost the row: the chain's record stands
                tx_hash, block = "", 0
            record = self.chain.get_fl_round(job_id, server_round)
        except ChainError as exc:
            raise ServiceUnavailable(
                f"could not record round {server_round} on chain: {exc}", backend="chain"
            ) from exc
        if record.updates_root != tree.root or record.aggregate_hash != aggregate:
            raise Unprocessable(
                f"round {server_round} is on chain with root {record.updates_root.hex()}, "
                f"not {tree.root.hex()}",
                field="round",
            )
        with self.sessions.begin() as s:
            s.add(
                FlAuditRound(
                    job_id=job_id,
                    round=server_round,
                    updates_root=tree.root.hex(),
                    aggregate_hash=aggregate.hex(),
                    update_count=tree.count,
                    leaves=rows,
                    disputes=[],
                    tx_hash=tx_hash,
                    block_number=block or record.recorded_block,
                )
            )
        log.info(
            "FL job %s round %d on chain: root %s (%d updates)",
            job_id,
            server_round,
            tree.root.hex(),
            tree.count,
        )

    def record_disputes(self, job_id: str, server_round: int, refused: list[Mapping[str, Any]]) -> None:
        """Devices whose check of their inclusion proof failed (their evaluate reply said so)."""
        if not refused:
            return
        with self.sessions.begin() as s:
            parts = {
                p.node_id: p.device_id
                for p in s.scalars(select(FlParticipant).where(FlParticipant.job_id == job_id))
            }
            row = s.scalar(
                select(FlAuditRound).where(FlAuditRound.job_id == job_id, FlAuditRound.round == server_round)
            )
            disputes = [
                {"node_id": str(r.get("node_id")), "device_id": parts.get(str(r.get("node_id"))),
                 "reason": str(r.get("reason"))[:1000]}
                for r in refused
            ]  # fmt: skip
            for d in disputes:
                log.error("FL job %s round %d: device %s disputes the audit: %s", job_id, server_round,
                          d["device_id"], d["reason"])  # fmt: skip
            if row is not None:
                row.disputes = [*(row.disputes or []), *disputes]

    def confirmation(self, job_id: str, report: Mapping[str, Any]) -> dict[str, Any] | None:
        """What the report route answers a train report that carried an audit: the round as on chain."""
        if report.get("type") != "round" or report.get("kind") != "train" or not report.get("audit"):
            return None
        with self.sessions() as s:
            row = s.scalar(
                select(FlAuditRound).where(
                    FlAuditRound.job_id == job_id, FlAuditRound.round == int(report["round"])
                )
            )
        if row is None:
            return None
        return {
            "audit": {
                "round": row.round,
                "chain_root": row.updates_root,
                "tx_hash": row.tx_hash,
                "block_number": row.block_number,
            }
        }

    def last_aggregate(self, job_id: str) -> str | None:
        """The aggregate hash of the job's last recorded round (None: no round was audited)."""
        with self.sessions() as s:
            row = s.scalar(
                select(FlAuditRound).where(FlAuditRound.job_id == job_id).order_by(FlAuditRound.round.desc())
            )
        return row.aggregate_hash if row is not None else None

    # ---------------------------------------------------------------- the audit document
    def audit(self, job_id: str) -> FlAuditOut:
        with self.sessions() as s:
            job = s.get(FlJob, job_id)
            if job is None:
                raise NotFound(f"FL job {job_id} not found")
            rows = list(
                s.scalars(
                    select(FlAuditRound).where(FlAuditRound.job_id == job_id).order_by(FlAuditRound.round)
                )
            )
            version = (
                s.scalar(
                    select(ModelVersion).where(
                        ModelVersion.model_id == job.model_id, ModelVersion.version == job.result_version
                    )
                )
                if job.result_version is not None
                else None
            )
            status, model_id, result_version, result_sha = (
                job.state,
                job.model_id,
                job.result_version,
                job.result_sha256,
            )
            descriptor = dict(version.descriptor or {}) if version is not None else {}
            exempt = audit_lineage_exempt(job)
            secure = bool((job.privacy or {}).get("secure_aggregation"))
        rounds = [self._round_out(job_id, row) for row in rows]
        final = None
        if result_version is not None and result_sha:
            chain_hash, chain_error = None, None
            try:
                chain_hash = self.chain.get_fl_run(job_id).final_model_hash.hex()
            except ChainError as exc:
                chain_error = str(exc)
            aggregate = descriptor.get(FINAL_AGGREGATE_KEY)
            final = FlAuditFinal(
                model_id=model_id,
                version=result_version,
                sha256=result_sha,
                aggregate_hash=aggregate if isinstance(aggregate, str) else None,
                lineage_applicable=not exempt,
                chain_final_model_hash=chain_hash,
                chain_error=chain_error,
            )
        return FlAuditOut(
            job_id=job_id,
            status=status,
            registry_address=self.chain.registry_address,
            chain_id=self.chain.chain_id,
            rounds=rounds,
            final=final,
            not_audited=(
                "SecAgg+: the controller never holds an individual update, so no round has a tree of updates"
                if secure
                else None
            ),
        )

    def _round_out(self, job_id: str, row: FlAuditRound) -> FlAuditRoundOut:
        chain, chain_error = None, None
        try:
            rec = self.chain.get_fl_round(job_id, row.round)
            chain = FlAuditChainRecord(
                updates_root=rec.updates_root.hex(),
                aggregate_hash=rec.aggregate_hash.hex(),
                update_count=rec.update_count,
                recorded_at=rec.recorded_at,
                recorded_block=rec.recorded_block,
            )
        except RecordNotFound as exc:
            chain_error = str(exc)
        except ChainError as exc:
            chain_error = f"chain unavailable: {exc}"
        leaves = list(row.leaves or [])
        digests = []
        for leaf in leaves:
            try:
                digests.append(bytes.fromhex(str(leaf.get("digest"))))
            except ValueError:
                digests.append(b"")
        try:
            tree: MerkleTree | None = MerkleTree(digests)
        except ValueError:
            tree = None  # a damaged row: the verifier says which leaf
        out_leaves = []
        for leaf in leaves:
            index = int(leaf.get("index", -1))
            proof: list[str] = []
            if tree is not None and 0 <= index < tree.count:
                proof = [h.hex() for h in tree.proof(index)]
            out_leaves.append(
                FlAuditLeaf(
                    index=index,
                    digest=str(leaf.get("digest")),
                    node_id=str(leaf.get("node_id")),
                    device_id=leaf.get("device_id"),
                    proof=proof,
                )
            )
        return FlAuditRoundOut(
            round=row.round,
            updates_root=row.updates_root,
            aggregate_hash=row.aggregate_hash,
            update_count=row.update_count,
            tx_hash=row.tx_hash or None,
            block_number=row.block_number,
            leaves=out_leaves,
            disputes=[FlAuditDispute.model_validate(d) for d in row.disputes or []],
            chain=chain,
            chain_error=chain_error,
        )
