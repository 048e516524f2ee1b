"""Errors raised by chain backends. Callers never see a web3, eth-tester or requests exception.

    ChainError                      anything that went wrong on or reaching the chain
    ├── ChainUnavailable            node down, connection refused, timeout, backend closed
    ├── JournalError                the in-process chain's journal cannot be read or replayed
    ├── ControllerKeyError          the controller's signing key is missing, invalid or exposed
    ├── InvalidRecord (ValueError)  a field is empty, zero or out of range (checked here or by the contract)
    ├── RecordExists                a record with this id already exists
    ├── RecordNotFound              no record with this id / no record contract at this address
    ├── AlreadyVerified             a model's result hash is already stored (verify is once only)
    └── NotOwner (= Unauthorized)   the signing account is not the record's owner

Errors decoded from a contract revert carry the Solidity error's name and arguments.
"""

from __future__ import annotations

from collections.abc import Mapping


class ChainError(Exception):
    """Base of every chain error.

    `contract_error` is the Solidity custom error's name (e.g. "FedgeRegistryAlreadyVerified") and
    `contract_args` its decoded arguments when the error comes from a contract revert.
    """

    def __init__(
        self,
        message: str,
        *,
        contract_error: str | None = None,
        contract_args: Mapping[str, object] | None = None,
    ) -> None:
        super().__init__(message)
        self.contract_error = contract_error
        self.contract_args: dict[str, object] = dict(contract_args or {})


class ChainUnavailable(ChainError):
    """The chain cannot be reached (node down, connection refused, timeout) or the backend is closed."""


class JournalError(ChainError):
    """The in-process chain's transaction journal is corrupt or does not replay."""


class ControllerKeyError(ChainError):
    """The controller's signing key is invalid, unreadable or readable by other users."""


class InvalidRecord(ChainError, ValueError):
    """A record field is empty, zero or out of range."""


class RecordExists(ChainError):
    """A record with this id is already on chain."""


class RecordNotFound(ChainError):
    """No record with this id, or no record contract at this address."""


class AlreadyVerified(ChainError):
    """The model was already verified; its result hash cannot change."""


class NotOwner(ChainError):
    """The signing account is not the owner of the record or registry."""


Unauthorized = NotOwner

__all__ = [
    "AlreadyVerified",
    "ChainError",
    "ChainUnavailable",
    "ControllerKeyError",
    "InvalidRecord",
    "JournalError",
    "NotOwner",
    "RecordExists",
    "RecordNotFound",
    "Unauthorized",
]
