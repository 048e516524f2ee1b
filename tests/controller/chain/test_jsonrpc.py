"""JSON-RPC specifics: node reachability, chain id, the registry address kept across restarts."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from pathlib import Path

import pytest
from eth_account import Account

from controller.chain import ChainError, ChainUnavailable, RecordExists, TxReceipt, make_chain_backend
from controller.chain.jsonrpc import JsonRpcChainBackend
from tests.fixtures.services import free_port


def test_unreachable_node_raises_chain_unavailable(tmp_path: Path) -> None:
    with pytest.raises(ChainUnavailable):
        make_chain_backend("jsonrpc", tmp_path, rpc_url=f"http://127.0.0.1:{free_port()}")


def test_chain_id_mismatch_is_refused(tmp_path: Path, anvil_url: str) -> None:
    with pytest.raises(ChainError, match="chain id 31337"):
        make_chain_backend("jsonrpc", tmp_path, rpc_url=anvil_url, chain_id=1)


def test_registry_address_is_kept_in_the_data_dir(tmp_path: Path, anvil_url: str) -> None:
    key = "0x" + os.urandom(32).hex()
    first = make_chain_backend("jsonrpc", tmp_path, rpc_url=anvil_url, private_key=key)
    first.register_dataset("ds-1", "org", "(1,)", 1, hashlib.sha256(b"d").digest(), bytes(16))
    first.close()
    (state_file,) = (tmp_path / "chain").glob("registry-31337-*.json")
    assert json.loads(state_file.read_text())["registry"] == first.registry_address

    second = make_chain_backend("jsonrpc", tmp_path, rpc_url=anvil_url, private_key=key)
    try:
        assert second.registry_address == first.registry_address
        assert second.get_dataset("ds-1").sha256 == hashlib.sha256(b"d").digest()
    finally:
        second.close()


def test_registry_address_from_settings_is_used(tmp_path: Path, anvil_url: str) -> None:
    key = "0x" + os.urandom(32).hex()
    first = make_chain_backend("jsonrpc", tmp_path / "a", rpc_url=anvil_url, private_key=key)
    second = make_chain_backend(
        "jsonrpc", tmp_path / "b", rpc_url=anvil_url, private_key=key, registry_address=first.registry_address
    )
    assert second.registry_address == first.registry_address
    assert not list((tmp_path / "b" / "chain").glob("registry-*.json"))


def test_settings_registry_without_code_is_refused(tmp_path: Path, anvil_url: str) -> None:
    with pytest.raises(ChainError, match="no contract"):
        make_chain_backend("jsonrpc", tmp_path, rpc_url=anvil_url, registry_address="0x" + "12" * 20)


def test_without_a_configured_key_the_data_dir_key_signs(tmp_path: Path, anvil_url: str) -> None:
    first = make_chain_backend("jsonrpc", tmp_path, rpc_url=anvil_url)
    first.close()
    second = make_chain_backend("jsonrpc", tmp_path, rpc_url=anvil_url)
    key = (tmp_path / "chain" / "controller.key").read_text().strip()
    assert second.controller_address == first.controller_address == Account.from_key(key).address
    assert second.registry_address == first.registry_address


def test_send_with_a_nonce_taken_meanwhile_is_re_signed(
    tmp_path: Path, anvil_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    backend = make_chain_backend(
        "jsonrpc", tmp_path, rpc_url=anvil_url, private_key="0x" + os.urandom(32).hex()
    )
    assert isinstance(backend, JsonRpcChainBackend)
    taken = backend._next_nonce() - 1  # used by the registry deployment
    real_next_nonce = backend._next_nonce
    stale = [taken]  # as if another process on the same key had just used it
    monkeypatch.setattr(backend, "_next_nonce", lambda: stale.pop() if stale else real_next_nonce())

    with caplog.at_level(logging.INFO, logger="controller.chain._web3"):
        backend.register_dataset("ds-1", "org", "(1,)", 1, hashlib.sha256(b"d").digest(), bytes(16))
    assert [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()] == [
        f"nonce {taken} was taken (another signer on this key?); retrying"
    ]
    assert backend.get_dataset("ds-1").size_bytes == 1


def test_transactions_share_a_block_and_a_lost_race_is_decoded(tmp_path: Path, anvil_url: str) -> None:
    backend = make_chain_backend(
        "jsonrpc", tmp_path, rpc_url=anvil_url, private_key="0x" + os.urandom(32).hex()
    )
    assert isinstance(backend, JsonRpcChainBackend)
    rpc = backend._w3.provider.make_request
    w3 = backend._w3
    sent_before = w3.eth.get_transaction_count(backend.controller_address)  # type: ignore[arg-type]
    outcomes: dict[str, object] = {}

    def register(name: str) -> None:
        try:
            outcomes[name] = backend.register_dataset(
                "ds-race", name, "(1,)", 1, hashlib.sha256(b"d").digest(), bytes(16)
            )
        except ChainError as exc:
            outcomes[name] = exc

    rpc("evm_setAutomine", [False])  # type: ignore[arg-type]
    try:
        threads = [threading.Thread(target=register, args=(name,)) for name in ("first", "second")]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while w3.eth.get_transaction_count(backend.controller_address, "pending") < sent_before + 2:  # type: ignore[arg-type]
            assert time.monotonic() < deadline, "both transactions should be sent before either is mined"
            time.sleep(0.01)
        rpc("evm_mine", [])  # type: ignore[arg-type]
        for thread in threads:
            thread.join(30)
    finally:
        rpc("evm_setAutomine", [True])  # type: ignore[arg-type]
    receipts = [o for o in outcomes.values() if isinstance(o, TxReceipt)]
    errors = [o for o in outcomes.values() if isinstance(o, ChainError)]
    assert len(receipts) == 1 and len(errors) == 1
    assert isinstance(errors[0], RecordExists)
    assert errors[0].contract_args == {"datasetId": "ds-race"}
