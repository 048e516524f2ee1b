"""The seed's record contracts (admin): ``POST /v1/contracts``, ``POST /v1/contracts/{address}/verify``.

``GET /v1/contracts/{address}`` has no schema: it answers the decoded contract in the seed's JSON shape,
which depends on the contract's kind."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

_HEX32 = r"^(0x)?[0-9a-fA-F]{64}$"


class DeployRequest(BaseModel):
    kind: Literal["dataset", "model"]
    args: dict[str, Any] = Field(
        description="dataset: dataset_id, organization_id, samples_dimension, size_bytes, sha256, hash; "
        "model: model_id, organization_id, developer_id, dataset_id, train_image_hash (32-byte hex)"
    )


class VerifyRequest(BaseModel):
    result_hash: str = Field(pattern=_HEX32, description="SHA-256 of the training result, hex")


class ReceiptOut(BaseModel):
    address: str
    tx_hash: str
    block_number: int
    gas_used: int
    events: list[dict[str, Any]]
