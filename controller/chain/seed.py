"""SeedContracts: the seed's per-asset ``DatasetRecord`` / ``ModelRecord`` contracts.

Only the seed-compatible admin routes (``/v1/contracts``) use them; fedge's own records live in the
registry behind :class:`~controller.chain.base.ChainBackend`. A backend hands them out through its one
accessor, ``ChainBackend.seed_contracts``, signed by the same controller account.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Literal

from controller.chain.base import TxReceipt

ContractKind = Literal["dataset", "model"]


class SeedContracts(ABC):
    """Deploy, read and verify per-asset record contracts. Methods raise only ``ChainError`` subclasses."""

    @abstractmethod
    def deploy(self, kind: ContractKind, args: Mapping[str, object]) -> TxReceipt:
        """Deploy a DatasetRecord or ModelRecord; receipt.contract_address is the new contract.

        dataset args: dataset_id, organization_id, samples_dimension, size_bytes, sha256 (hex or bytes),
        hash (MD5, hex or bytes; optional). model args: model_id, organization_id, developer_id,
        dataset_id, train_image_hash (32-byte digest, hex or bytes).
        """

    @abstractmethod
    def describe(self, address: str) -> dict[str, object]:
        """Seed-style metadata of a DatasetRecord or ModelRecord; RecordNotFound for any other address."""

    @abstractmethod
    def verify(self, address: str, result_hash: bytes) -> TxReceipt:
        """Call verify on a ModelRecord (AlreadyVerified / NotOwner as for ``verify_model``)."""
