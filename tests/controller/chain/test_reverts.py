"""Contract reverts map onto our error tree, whatever library raised them."""

from __future__ import annotations

from eth_abi.abi import encode
from eth_utils.crypto import keccak

from controller.chain._reverts import ERRORS, RevertDecoder, revert_data, translate
from controller.chain.contracts import ALL_CONTRACTS, load_contract
from controller.chain.errors import AlreadyVerified, ChainError, ChainUnavailable, NotOwner


def decoder() -> RevertDecoder:
    return RevertDecoder(load_contract(name).abi for name in ALL_CONTRACTS)


def test_every_contract_error_is_mapped() -> None:
    assert decoder().error_names == set(ERRORS)


def test_custom_error_decodes_with_its_arguments() -> None:
    data = keccak(text="FedgeRegistryAlreadyVerified(string,bytes32)")[:4] + encode(
        ["string", "bytes32"], ["m-1", b"\x11" * 32]
    )
    error = decoder().decode(data)
    assert isinstance(error, AlreadyVerified)
    assert (error.contract_error, error.contract_args) == (
        "FedgeRegistryAlreadyVerified",
        {"modelId": "m-1", "resultHash": b"\x11" * 32},
    )


def test_address_arguments_are_checksummed() -> None:
    data = keccak(text="ModelRecordUnauthorized(address)")[:4] + encode(["address"], ["0x" + "ab" * 20])
    error = decoder().decode(data)
    assert isinstance(error, NotOwner)
    assert error.contract_args == {"caller": "0xABaBaBaBABabABabAbAbABAbABabababaBaBABaB"}


def test_eth_tester_bytes_repr_is_parsed() -> None:
    class TransactionFailed(Exception):
        pass

    payload = keccak(text="ModelRecordAlreadyVerified(bytes32)")[:4] + b"\x27" * 32  # contains a quote
    exc = TransactionFailed(f"execution reverted: {payload!r}")
    assert revert_data(exc) == payload
    assert isinstance(translate(exc, decoder()), AlreadyVerified)


def test_error_string_and_unknown_selector_are_generic_chain_errors() -> None:
    reason = decoder().decode(keccak(text="Error(string)")[:4] + encode(["string"], ["nope"]))
    unknown = decoder().decode(b"\xde\xad\xbe\xef")
    assert type(reason) is ChainError and "nope" in str(reason)
    assert type(unknown) is ChainError


def test_connection_errors_become_chain_unavailable() -> None:
    assert isinstance(translate(ConnectionRefusedError("refused"), decoder()), ChainUnavailable)
