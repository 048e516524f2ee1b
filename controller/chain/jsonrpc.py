"""JSON-RPC backend: any EVM node (Besu, Geth, Quorum; anvil for development).

Transactions are signed locally and sent with eth_sendRawTransaction. The registry's address comes from
settings or from `<state_dir>/registry-<chain id>-<genesis hash>.json`, written when this backend
deploys a registry; keying the file by the genesis hash makes a reset development chain get a new one.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from eth_typing import ChecksumAddress
from web3 import Web3
from web3.exceptions import TransactionNotFound

from controller.chain._web3 import Web3ChainBackend, _hex, to_checksum_address
from controller.chain.contracts import REGISTRY, load_contract
from controller.chain.errors import ChainError, ChainUnavailable
from controller.chain.keys import ControllerKey
from fedge_common.files import atomic_write

log = logging.getLogger(__name__)

DEV_NODE_PREFIXES = ("anvil", "hardhat")
DEV_FUND_WEI = 10_000 * 10**18
GAS_HEADROOM = 1.25
NONCE_CONFLICT_MARKERS = (
    "nonce too low",
    "already known",
    "known transaction",
    "replacement transaction underpriced",
    "nonce has already been used",
)


class JsonRpcChainBackend(Web3ChainBackend):
    """ChainBackend on an EVM node reached over HTTP JSON-RPC."""

    def __init__(
        self,
        rpc_url: str,
        key: ControllerKey,
        *,
        state_dir: Path | None = None,
        chain_id: int | None = None,
        registry_address: str | None = None,
        request_timeout_s: float = 30.0,
        receipt_timeout_s: float = 120.0,
        _shared: tuple[Web3, threading.RLock, int, str] | None = None,
    ) -> None:
        self._rpc_url = rpc_url
        self._state_dir = state_dir
        self._receipt_timeout_s = receipt_timeout_s
        self._request_timeout_s = request_timeout_s
        self._nonce_hint = 0
        if _shared is not None:
            w3, lock, actual_chain_id, registry = _shared
            super().__init__(w3, key, lock, actual_chain_id)
            self._bind_registry(registry)
            return
        if not rpc_url.startswith(("http://", "https://")):
            raise ChainError(f"chain RPC URL must be http(s), got {rpc_url!r}")
        w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": request_timeout_s}))
        try:
            actual_chain_id = int(w3.eth.chain_id)
        except Exception as exc:
            raise ChainUnavailable(f"chain node at {rpc_url} unavailable: {type(exc).__name__}") from exc
        if chain_id is not None and chain_id != actual_chain_id:
            raise ChainError(
                f"chain node at {rpc_url} runs chain id {actual_chain_id}, settings say {chain_id}"
            )
        super().__init__(w3, key, threading.RLock(), actual_chain_id)
        with self._boundary():
            self._fund_on_dev_node()
            self._bind_registry(self._resolve_registry(registry_address))

    # -- setup --------------------------------------------------------------------------------------

    def _fund_on_dev_node(self) -> None:
        client = str(self._w3.client_version).lower()
        if not client.startswith(DEV_NODE_PREFIXES):
            return
        if self._w3.eth.get_balance(self._address) >= DEV_FUND_WEI // 10:
            return
        method = "anvil_setBalance" if client.startswith("anvil") else "hardhat_setBalance"
        response = self._w3.provider.make_request(method, [self._address, hex(DEV_FUND_WEI)])  # type: ignore[arg-type]
        if "error" in response:
            raise ChainError(f"{method} failed: {response['error']}")
        log.info("funded %s on development node %s", self.controller_address, client)

    def _state_file(self) -> Path | None:
        if self._state_dir is None:
            return None
        genesis = _hex(self._w3.eth.get_block(0)["hash"])
        return self._state_dir / f"registry-{self.chain_id}-{genesis[2:18]}.json"

    def _resolve_registry(self, configured: str | None) -> ChecksumAddress:
        if configured:
            address = to_checksum_address(configured)
            self._check_registry(address, source="settings")
            return address
        state_file = self._state_file()
        if state_file is not None and state_file.exists():
            address = to_checksum_address(json.loads(state_file.read_text(encoding="utf-8"))["registry"])
            self._check_registry(address, source=str(state_file))
            return address
        receipt = self._transact(None, load_contract(REGISTRY).bytecode, label="registry")
        address = to_checksum_address(receipt.contract_address)
        log.info("deployed FedgeRegistry at %s on chain %d", address, self.chain_id)
        if state_file is not None:
            state_file.parent.mkdir(parents=True, exist_ok=True)
            record = {"registry": address, "chain_id": self.chain_id, "tx": receipt.tx_hash}
            atomic_write(state_file, json.dumps(record, indent=2, sort_keys=True) + "\n", mode=None)
        return address

    def _check_registry(self, address: ChecksumAddress, *, source: str) -> None:
        if not self._w3.eth.get_code(address):
            raise ChainError(
                f"no contract at registry address {address} (from {source}) on chain {self.chain_id}"
            )
        contract = self._w3.eth.contract(address=address, abi=load_contract(REGISTRY).abi)
        try:
            owner = contract.functions.owner().call()
        except Exception as exc:
            raise ChainError(f"contract at {address} (from {source}) is not a FedgeRegistry") from exc
        if owner != self.controller_address:
            log.warning(
                "FedgeRegistry %s is owned by %s, not by this controller key (%s): writes fail with NotOwner",
                address,
                owner,
                self.controller_address,
            )

    # -- hooks --------------------------------------------------------------------------------------

    def _next_nonce(self) -> int:
        return max(self._nonce_hint, super()._next_nonce())

    def _after_send(self, nonce: int) -> None:
        self._nonce_hint = nonce + 1

    def _nonce_conflict(self, exc: Exception) -> bool:
        message = str(exc).lower()
        if any(marker in message for marker in NONCE_CONFLICT_MARKERS):
            self._nonce_hint = 0
            return True
        return False

    def _simulate(self, call: dict[str, Any]) -> None:
        """eth_estimateGas in _gas_limit runs the transaction too and reports a revert with its data."""

    def _gas_limit(self, call: dict[str, Any]) -> int:
        estimate = int(self._w3.eth.estimate_gas(call))  # type: ignore[arg-type]
        return int(estimate * GAS_HEADROOM) + 10_000 if estimate > 21_000 else estimate

    def _submit(self, raw: bytes, label: str | None) -> Any:
        return self._w3.eth.send_raw_transaction(raw)

    def _await(self, pending: Any) -> Mapping[str, Any]:
        # Poll quickly at first (a dev node mines at once), then back off (a real chain takes seconds).
        deadline = time.monotonic() + self._receipt_timeout_s
        delay = 0.002
        while True:
            try:
                receipt: Mapping[str, Any] = self._w3.eth.get_transaction_receipt(pending)
                return receipt
            except TransactionNotFound:
                pass
            if time.monotonic() > deadline:
                with self._lock:
                    self._nonce_hint = 0  # if the node dropped it, let the node's count decide the next nonce
                raise ChainUnavailable(
                    f"transaction {_hex(pending)} not mined within {self._receipt_timeout_s:.0f}s "
                    "(it may still be mined later)"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    # -- lifecycle ----------------------------------------------------------------------------------

    def with_signer(self, private_key: str) -> JsonRpcChainBackend:
        self._check_open()
        return JsonRpcChainBackend(
            self._rpc_url,
            ControllerKey(private_key),
            state_dir=self._state_dir,
            receipt_timeout_s=self._receipt_timeout_s,
            request_timeout_s=self._request_timeout_s,
            _shared=(self._w3, threading.RLock(), self.chain_id, self.registry_address),
        )

    def close(self) -> None:
        self._closed = True
