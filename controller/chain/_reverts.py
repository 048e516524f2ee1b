"""Turn a revert (or any library exception) into our ChainError tree, decoding custom errors by ABI."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from eth_abi.abi import decode as abi_decode
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from controller.chain.errors import (
    AlreadyVerified,
    ChainError,
    ChainUnavailable,
    InvalidRecord,
    NotOwner,
    RecordExists,
    RecordNotFound,
)

# Solidity custom error name -> (our exception, message template over the error's arguments).
ERRORS: dict[str, tuple[type[ChainError], str]] = {
    "FedgeRegistryUnauthorized": (NotOwner, "account {caller} is not the registry's owner"),
    "FedgeRegistryDatasetExists": (RecordExists, "dataset {datasetId!r} is already registered"),
    "FedgeRegistryUnknownDataset": (RecordNotFound, "dataset {datasetId!r} is not registered"),
    "FedgeRegistryModelExists": (RecordExists, "model {modelId!r} is already registered"),
    "FedgeRegistryUnknownModel": (RecordNotFound, "model {modelId!r} is not registered"),
    "FedgeRegistryAlreadyVerified": (
        AlreadyVerified,
        "model {modelId!r} is already verified (result hash {resultHash})",
    ),
    "FedgeRegistryArtifactExists": (
        RecordExists,
        "artifact {version} of model {modelId!r} is already recorded",
    ),
    "FedgeRegistryUnknownArtifact": (
        RecordNotFound,
        "artifact {version} of model {modelId!r} is not recorded",
    ),
    "FedgeRegistryRunExists": (RecordExists, "federated-learning run {runId!r} is already recorded"),
    "FedgeRegistryUnknownRun": (RecordNotFound, "federated-learning run {runId!r} is not recorded"),
    "FedgeRegistryRoundExists": (
        RecordExists,
        "round {round} of federated-learning run {runId!r} is already recorded (updates root {updatesRoot})",
    ),
    "FedgeRegistryUnknownRound": (
        RecordNotFound,
        "round {round} of federated-learning run {runId!r} is not recorded",
    ),
    "FedgeRegistryInvalidField": (InvalidRecord, "invalid {field}"),
    "DatasetRecordInvalidField": (InvalidRecord, "invalid {field}"),
    "ModelRecordUnauthorized": (NotOwner, "account {caller} is not the model record's owner"),
    "ModelRecordAlreadyVerified": (
        AlreadyVerified,
        "model record is already verified (result hash {resultHash})",
    ),
    "ModelRecordInvalidField": (InvalidRecord, "invalid {field}"),
}

_ERROR_STRING = keccak(text="Error(string)")[:4]
_PANIC = keccak(text="Panic(uint256)")[:4]
_BYTES_REPR = re.compile(r"""(b'(?:[^'\\]|\\.)*'|b"(?:[^"\\]|\\.)*")\s*$""", re.DOTALL)


@dataclass(frozen=True)
class _ErrorAbi:
    name: str
    names: tuple[str, ...]
    types: tuple[str, ...]


class RevertDecoder:
    """Decodes revert data of our contracts' custom errors into ChainError subclasses."""

    def __init__(self, abis: Iterable[list[dict[str, Any]]]) -> None:
        self._by_selector: dict[bytes, _ErrorAbi] = {}
        for abi in abis:
            for item in abi:
                if item.get("type") != "error":
                    continue
                types = tuple(_abi_type(i) for i in item["inputs"])
                selector = keccak(text=f"{item['name']}({','.join(types)})")[:4]
                names = tuple(str(i["name"]) for i in item["inputs"])
                self._by_selector[selector] = _ErrorAbi(item["name"], names, types)

    @property
    def error_names(self) -> set[str]:
        return {e.name for e in self._by_selector.values()}

    def decode(self, data: bytes) -> ChainError:
        selector, payload = data[:4], data[4:]
        if selector == _ERROR_STRING:
            (reason,) = _safe_decode(("string",), payload) or ("<undecodable>",)
            return ChainError(f"transaction reverted: {reason}")
        if selector == _PANIC:
            (code,) = _safe_decode(("uint256",), payload) or (-1,)
            return ChainError(f"transaction reverted: panic 0x{code:02x}")
        spec = self._by_selector.get(selector)
        if spec is None:
            return ChainError(f"transaction reverted (unknown error 0x{data.hex()[:64]})")
        values = _safe_decode(spec.types, payload)
        if values is None:
            return ChainError(f"transaction reverted with undecodable {spec.name}")
        args = {
            n: to_checksum_address(v) if t == "address" else _plain(v)
            for n, t, v in zip(spec.names, spec.types, values, strict=True)
        }
        cls, template = ERRORS.get(spec.name, (ChainError, spec.name))
        shown = {k: ("0x" + v.hex() if isinstance(v, bytes) else v) for k, v in args.items()}
        return cls(template.format(**shown), contract_error=spec.name, contract_args=args)


def revert_data(exc: BaseException) -> bytes | None:
    """The raw revert data carried by a web3 / eth-tester exception, if any."""
    data = getattr(exc, "data", None)
    if isinstance(data, str) and data.startswith("0x") and len(data) >= 10:
        try:
            return bytes.fromhex(data[2:])
        except ValueError:
            return None
    response = getattr(exc, "rpc_response", None)
    if isinstance(response, dict):
        error = response.get("error")
        if isinstance(error, dict) and isinstance(error.get("data"), str):
            text = error["data"]
            if text.startswith("0x") and len(text) >= 10:
                try:
                    return bytes.fromhex(text[2:])
                except ValueError:
                    return None
    # eth-tester: TransactionFailed("execution reverted: b'...'") carries the bytes' repr.
    if type(exc).__name__ == "TransactionFailed" and exc.args and isinstance(exc.args[0], str):
        match = _BYTES_REPR.search(exc.args[0])
        if match:
            try:
                value = ast.literal_eval(match.group(1))
            except (ValueError, SyntaxError):
                return None
            if isinstance(value, bytes) and len(value) >= 4:
                return value
    return None


_UNAVAILABLE_NAMES = {
    "ConnectionError",
    "ConnectTimeout",
    "ReadTimeout",
    "Timeout",
    "ProviderConnectionError",
    "TimeExhausted",
    "ClientConnectorError",
}


def translate(exc: BaseException, decoder: RevertDecoder) -> ChainError:
    """Map any exception raised by web3 / eth-tester / requests to our error tree."""
    if isinstance(exc, ChainError):
        return exc
    data = revert_data(exc)
    if data is not None:
        return decoder.decode(data)
    names = {cls.__name__ for cls in type(exc).__mro__}
    if names & _UNAVAILABLE_NAMES or isinstance(exc, OSError):
        return ChainUnavailable(f"chain node unavailable: {type(exc).__name__}: {_short(exc)}")
    if "TransactionFailed" in names or "ContractLogicError" in names:
        return ChainError(f"transaction reverted: {_short(exc)}")
    if "Web3RPCError" in names:
        return ChainError(f"chain node rejected the request: {_short(exc)}")
    return ChainError(f"chain request failed: {type(exc).__name__}: {_short(exc)}")


def _short(exc: BaseException, limit: int = 300) -> str:
    text = str(exc)
    return text if len(text) <= limit else text[:limit] + "..."


def _abi_type(item: dict[str, Any]) -> str:
    kind = str(item["type"])
    if kind.startswith("tuple"):
        inner = ",".join(_abi_type(c) for c in item["components"])
        return f"({inner}){kind[5:]}"
    return kind


def _safe_decode(types: tuple[str, ...], payload: bytes) -> tuple[Any, ...] | None:
    try:
        return tuple(abi_decode(list(types), payload))
    except Exception:
        return None


def _plain(value: object) -> object:
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, list | tuple):
        return tuple(_plain(v) for v in value)
    return value
