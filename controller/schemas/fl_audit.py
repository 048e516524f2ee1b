"""``GET /v1/fl/jobs/{job_id}/audit``: every aggregated round of an FL job as recorded on chain, with each
participant's Merkle leaf and inclusion proof (docs/fl-audit.md). Hashes are lowercase hex SHA-256."""

from __future__ import annotations

from pydantic import BaseModel, Field


class FlAuditLeaf(BaseModel):
    index: int = Field(description="position of the digest among the round's sorted update digests")
    digest: str = Field(description="update digest (fedge_protocol.merkle.update_digest) of the reply")
    node_id: str
    device_id: str | None
    proof: list[str] = Field(description="sibling hashes from the leaf up to the root")


class FlAuditDispute(BaseModel):
    node_id: str
    device_id: str | None
    reason: str = Field(description="why the device's check of its inclusion proof failed")


class FlAuditChainRecord(BaseModel):
    """The round as the chain holds it (read when the audit is requested)."""

    updates_root: str
    aggregate_hash: str
    update_count: int
    recorded_at: int = Field(description="block timestamp, seconds")
    recorded_block: int


class FlAuditRoundOut(BaseModel):
    round: int
    updates_root: str = Field(description="the root the controller stored (the verifier recomputes it)")
    aggregate_hash: str = Field(description="digest of the round's aggregate")
    update_count: int
    tx_hash: str | None = Field(description="the record_fl_round transaction")
    block_number: int
    leaves: list[FlAuditLeaf]
    disputes: list[FlAuditDispute] = Field(default_factory=list)
    chain: FlAuditChainRecord | None = Field(description="the on-chain record; null when it is missing")
    chain_error: str | None = None


class FlAuditFinal(BaseModel):
    """The hash lineage of the registered result."""

    model_id: str
    version: int
    sha256: str = Field(description="the registered version's SHA-256")
    aggregate_hash: str | None = Field(
        description="digest of the final parameters, from the version's descriptor"
    )
    lineage_applicable: bool = Field(
        description="false when the last aggregate is not the final parameters (HE: a ciphertext sum)"
    )
    chain_final_model_hash: str | None = Field(description="the FL run's on-chain final model hash")
    chain_error: str | None = None


class FlAuditOut(BaseModel):
    job_id: str
    status: str
    registry_address: str
    chain_id: int
    rounds: list[FlAuditRoundOut]
    final: FlAuditFinal | None = Field(description="null until the job registered its result")
    not_audited: str | None = Field(
        default=None, description="why the job's rounds are not audited per update (SecAgg+), else null"
    )
