"""The ChainBackend interface and the records it returns.

A backend stores fedge's provenance records on an EVM chain through one registry contract
(`FedgeRegistry`, records keyed by id); the seed-compatible admin routes reach the per-asset
`DatasetRecord` / `ModelRecord` contracts through its `seed_contracts` accessor (controller/chain/seed.py).
Every transaction is signed locally with the controller's key and sent raw. Implementations: in-process
EVM (`evm`), any JSON-RPC node (`jsonrpc`).
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from controller.chain.seed import SeedContracts


def participant_hash(device_id: str) -> bytes:
    """How a federated-learning participant is committed to on chain: SHA-256 of its device id."""
    return hashlib.sha256(device_id.encode("utf-8")).digest()


@dataclass(frozen=True)
class ChainEvent:
    """A decoded event log of one of our contracts; bytes values are `bytes`, addresses checksummed."""

    name: str
    address: str
    args: Mapping[str, object] = field(hash=False)


@dataclass(frozen=True)
class TxReceipt:
    """A mined, successful transaction."""

    tx_hash: str
    block_number: int
    gas_used: int
    contract_address: str  # the contract holding the record (the registry, or a per-asset contract)
    events: tuple[ChainEvent, ...] = ()


@dataclass(frozen=True)
class DatasetOnChain:
    dataset_id: str
    organization_id: str
    samples_dimension: str
    size_bytes: int
    sha256: bytes
    md5: bytes
    contract_address: str
    registered_at: int  # block timestamp, seconds


@dataclass(frozen=True)
class ModelOnChain:
    model_id: str
    organization_id: str
    developer_id: str
    dataset_id: str
    training_digest: bytes
    verified: bool
    result_hash: bytes | None
    verified_at: int | None
    contract_address: str
    registered_at: int


@dataclass(frozen=True)
class ArtifactOnChain:
    model_id: str
    version: int
    kind: str  # "onnx", "quantized-int8", ...
    sha256: bytes
    source_version: int  # 0: derived from the verified training result
    contract_address: str
    recorded_at: int


@dataclass(frozen=True)
class FLRunOnChain:
    run_id: str
    participant_hashes: tuple[bytes, ...]  # participant_hash(device_id) of each, sorted
    participants_digest: bytes  # keccak256 of the concatenated hashes, computed by the contract
    rounds: int
    strategy: str
    dp_epsilon: float | None  # None: DP off. Stored as epsilon x 1e6
    dp_delta: float | None  # None: DP off. Stored as delta x 1e18
    he_enabled: bool
    final_model_hash: bytes
    model_id: str | None  # the registered model the final result became
    contract_address: str
    recorded_at: int


@dataclass(frozen=True)
class FLRoundOnChain:
    """One aggregated round of an FL run (docs/fl-audit.md): the Merkle root of its accepted updates."""

    run_id: str
    round: int
    updates_root: bytes
    aggregate_hash: bytes
    update_count: int
    contract_address: str
    recorded_at: int
    recorded_block: int


class ChainBackend(ABC):
    """Provenance records on an EVM chain, written by the controller's account.

    Methods raise only `controller.chain.errors.ChainError` subclasses. Implementations are thread-safe.
    """

    controller_address: str
    """Checksummed address of the account that signs every transaction."""

    registry_address: str
    """Checksummed address of the FedgeRegistry contract."""

    chain_id: int
    """EIP-155 chain id every transaction is signed for."""

    # -- datasets and models (registry) -------------------------------------------------------------

    @abstractmethod
    def register_dataset(
        self,
        dataset_id: str,
        organization_id: str,
        samples_dimension: str,
        size_bytes: int,
        sha256: bytes,
        md5: bytes,
    ) -> TxReceipt:
        """Record a dataset. RecordExists if the id is taken."""

    @abstractmethod
    def get_dataset(self, dataset_id: str) -> DatasetOnChain:
        """RecordNotFound if absent."""

    @abstractmethod
    def register_model(
        self,
        model_id: str,
        organization_id: str,
        developer_id: str,
        dataset_id: str,
        training_digest: bytes,
    ) -> TxReceipt:
        """Record a model trained on a registered dataset (RecordNotFound if it is not)."""

    @abstractmethod
    def verify_model(self, model_id: str, result_hash: bytes) -> TxReceipt:
        """Store the training result's hash; once per model (AlreadyVerified on a second call)."""

    @abstractmethod
    def get_model(self, model_id: str) -> ModelOnChain:
        """RecordNotFound if absent."""

    # -- provenance (registry) ----------------------------------------------------------------------

    @abstractmethod
    def record_artifact(
        self, model_id: str, version: int, kind: str, sha256: bytes, source_version: int = 0
    ) -> TxReceipt:
        """Record an artifact derived from a model (version >= 1; source_version 0 = training result)."""

    @abstractmethod
    def get_artifact(self, model_id: str, version: int) -> ArtifactOnChain:
        """RecordNotFound if absent."""

    @abstractmethod
    def record_fl_run(
        self,
        run_id: str,
        participant_ids: Sequence[str],
        rounds: int,
        strategy: str,
        final_model_hash: bytes,
        *,
        dp_epsilon: float | None = None,
        dp_delta: float | None = None,
        he_enabled: bool = False,
        model_id: str | None = None,
    ) -> TxReceipt:
        """Record a federated-learning run; device ids are stored only as participant_hash()."""

    @abstractmethod
    def get_fl_run(self, run_id: str) -> FLRunOnChain:
        """RecordNotFound if absent."""

    @abstractmethod
    def record_fl_round(
        self, run_id: str, round: int, updates_root: bytes, aggregate_hash: bytes, update_count: int
    ) -> TxReceipt:
        """Record one aggregated round of an FL run (one transaction; the run itself may come later).
        Write-once per (run, round): RecordExists on a second write."""

    @abstractmethod
    def get_fl_round(self, run_id: str, round: int) -> FLRoundOnChain:
        """RecordNotFound if absent."""

    # -- per-asset contracts (the seed's admin routes) ----------------------------------------------

    @property
    @abstractmethod
    def seed_contracts(self) -> SeedContracts:
        """The seed's DatasetRecord / ModelRecord contracts on this chain, signed by the same account."""

    # -- lifecycle ----------------------------------------------------------------------------------

    @abstractmethod
    def health(self) -> None:
        """Return if the chain answers; raise ChainUnavailable if not."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection / journal. Idempotent."""

    def __enter__(self) -> ChainBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
