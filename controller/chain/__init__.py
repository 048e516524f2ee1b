"""Provenance on an EVM chain: the ChainBackend interface (and the seed's SeedContracts), its errors and
the factory.

Implementations import web3 only when a factory (`make_chain`, `make_chain_backend`) builds them, so
importing this package is cheap.
"""

from controller.chain.base import (
    ArtifactOnChain,
    ChainBackend,
    ChainEvent,
    DatasetOnChain,
    FLRoundOnChain,
    FLRunOnChain,
    ModelOnChain,
    TxReceipt,
    participant_hash,
)
from controller.chain.errors import (
    AlreadyVerified,
    ChainError,
    ChainUnavailable,
    ControllerKeyError,
    InvalidRecord,
    JournalError,
    NotOwner,
    RecordExists,
    RecordNotFound,
    Unauthorized,
)
from controller.chain.factory import make_chain, make_chain_backend
from controller.chain.seed import ContractKind, SeedContracts

__all__ = [
    "AlreadyVerified",
    "ArtifactOnChain",
    "ChainBackend",
    "ChainError",
    "ChainEvent",
    "ChainUnavailable",
    "ContractKind",
    "ControllerKeyError",
    "DatasetOnChain",
    "FLRoundOnChain",
    "FLRunOnChain",
    "InvalidRecord",
    "JournalError",
    "ModelOnChain",
    "NotOwner",
    "RecordExists",
    "RecordNotFound",
    "SeedContracts",
    "TxReceipt",
    "Unauthorized",
    "make_chain",
    "make_chain_backend",
    "participant_hash",
]
