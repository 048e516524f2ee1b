"""In-process EVM backend (web3 + eth-tester/py-evm), made durable by a journal of signed transactions.

On start the journal is replayed into a fresh chain with the same genesis, each transaction mined at
the block timestamp it was first mined at, so contract addresses (sender + nonce), stored records and
their timestamps come back identical. The controller's account is funded by a journaled transfer from
eth-tester's prefunded account 0, so funding is part of the replayed history too.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from eth_tester import EthereumTester, PyEVMBackend
from web3 import EthereumTesterProvider, Web3

from controller.chain._web3 import Web3ChainBackend, _hex, to_checksum_address
from controller.chain.contracts import REGISTRY, load_contract
from controller.chain.errors import ChainError, JournalError
from controller.chain.journal import JournalEntry, JournalHeader, TxJournal
from controller.chain.keys import ControllerKey
from controller.chain.snapshot import read_snapshot, write_snapshot

log = logging.getLogger(__name__)

JOURNAL_FILE_NAME = "evm-journal.jsonl"
SNAPSHOT_FILE_NAME = "evm-snapshot.bin"
SNAPSHOT_EVERY = 500  # transactions between state snapshots (one is also written at a clean close)
FAUCET_KEY = (1).to_bytes(32, "big")  # eth-tester's prefunded account 0 (1,000,000 ether at genesis)
FUND_AMOUNT_WEI = 10_000 * 10**18
FUND_BELOW_WEI = 10**18
TX_GAS_LIMIT = 15_000_000  # every transaction is simulated first; the limit only caps the fee reserve
TRANSFER_GAS = 21_000


class _EvmNode:
    """The in-process chain, its journal and the lock every access takes. Shared by signer views."""

    def __init__(self, journal_path: Path, snapshot_every: int | None = None) -> None:
        self.lock = threading.RLock()
        self.closed = False
        self.snapshot_path = journal_path.with_name(SNAPSHOT_FILE_NAME)
        self.snapshot_every = SNAPSHOT_EVERY if snapshot_every is None else snapshot_every
        self.snapshot_offset = 0  # journal entries the newest snapshot on disk covers
        candidate = self._new_tester(int(time.time()))
        chain = candidate.backend.chain
        new_header = JournalHeader(
            chain_id=int(chain.chain_id),
            genesis_timestamp=int(chain.get_canonical_head().timestamp),
            fork=str(chain.get_vm().fork),
        )
        self.journal = TxJournal.open(journal_path, new_header)
        try:
            header = self.journal.header
            if header.chain_id != new_header.chain_id:
                raise JournalError(
                    f"journal {journal_path} is for chain id {header.chain_id}; eth-tester now runs "
                    f"{new_header.chain_id}"
                )
            if header.fork != new_header.fork:
                log.warning(
                    "chain journal %s was written on EVM fork %s, replaying on %s",
                    journal_path,
                    header.fork,
                    new_header.fork,
                )
            self.tester = (
                candidate
                if header.genesis_timestamp == new_header.genesis_timestamp
                else self._new_tester(header.genesis_timestamp)
            )
            self.w3 = Web3(EthereumTesterProvider(self.tester))
            self.chain_id = header.chain_id
            self._replay()
        except BaseException:
            self.journal.close()
            raise

    @staticmethod
    def _new_tester(genesis_timestamp: int) -> EthereumTester:
        params = PyEVMBackend.generate_genesis_params(overrides={"timestamp": genesis_timestamp})
        return EthereumTester(PyEVMBackend(genesis_parameters=params))

    def _restore_snapshot(self) -> int:
        """Load the snapshot if it fits the journal; returns how many journal entries it covers (0: none)."""
        snap = read_snapshot(self.snapshot_path, self.journal.header, self.journal.entries)
        if snap is None:
            return 0
        backend = self.tester.backend
        chain = backend.chain
        base_db = chain.chaindb.db
        store = base_db.wrapped_db.kv_store  # eth-tester's chain: AtomicDB over a MemoryDB
        saved = dict(store)
        store.clear()
        store.update(snap.kv)
        try:
            restored = type(chain)(base_db)
            head = restored.get_canonical_head()
            last = self.journal.entries[snap.offset - 1]
            got = (int(head.block_number), _hex(head.hash), _hex(head.state_root))
            if (
                got != (snap.head_number, snap.head_hash, snap.state_root)
                or head.block_number != last.block_number
            ):
                raise ValueError(
                    f"head (number, hash, state root) {got} does not match the snapshot or journal"
                )
            backend.chain = restored
            receipt = self.w3.eth.get_transaction_receipt(last.tx_hash)  # type: ignore[arg-type]
            if int(receipt["blockNumber"]) != last.block_number:
                raise ValueError(f"transaction {last.tx_hash} is not in block {last.block_number}")
        except Exception as exc:
            log.warning(
                "chain snapshot %s ignored (%s): replaying the whole journal", self.snapshot_path, exc
            )
            store.clear()
            store.update(saved)
            backend.chain = chain
            return 0
        self.snapshot_offset = snap.offset
        return snap.offset

    def write_snapshot(self) -> None:
        """Snapshot the chain's state after every journaled transaction so far (atomic replace)."""
        with self.lock:
            chain = self.tester.backend.chain
            head = chain.get_canonical_head()
            entries = self.journal.entries
            write_snapshot(
                self.snapshot_path,
                self.journal.header,
                entries,
                chain.chaindb.db.wrapped_db.kv_store,
                head_number=int(head.block_number),
                head_hash=_hex(head.hash),
                state_root=_hex(head.state_root),
            )
            self.snapshot_offset = len(entries)

    def _maybe_snapshot(self, force: bool = False) -> None:
        pending = len(self.journal.entries) - self.snapshot_offset
        if pending <= 0 or (not force and pending < self.snapshot_every):
            return
        try:
            self.write_snapshot()
        except Exception as exc:  # the journal stays the durable record; a missed snapshot costs replay time
            log.warning("could not write chain snapshot %s: %s", self.snapshot_path, exc)

    def _replay(self) -> None:
        started = time.perf_counter()
        start = self._restore_snapshot()
        for line, entry in enumerate(self.journal.entries[start:], start=2 + start):
            try:
                receipt = self._apply(entry.raw, entry.timestamp)
            except Exception as exc:
                raise JournalError(
                    f"journal {self.journal.path} line {line} (tx {entry.tx_hash}) does not replay: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            got = (
                _hex(receipt["transactionHash"]),
                int(receipt["blockNumber"]),
                int(receipt["status"]),
                _address_or_none(receipt.get("contractAddress")),
            )
            want = (entry.tx_hash, entry.block_number, entry.status, entry.contract_address)
            if got != want:
                raise JournalError(
                    f"journal {self.journal.path} line {line} replayed differently: "
                    f"(hash, block, status, contract) {got} != journaled {want}"
                )
        if self.journal.entries:
            log.info(
                "replayed %d chain transactions from %s in %.2fs (%d from the snapshot)",
                len(self.journal.entries),
                self.journal.path,
                time.perf_counter() - started,
                start,
            )
        if len(self.journal.entries) - start >= self.snapshot_every:
            self._maybe_snapshot()

    def _apply(self, raw: bytes, timestamp: int) -> Mapping[str, Any]:
        """Mine `raw` alone in a block with the given timestamp."""
        chain = self.tester.backend.chain
        chain.header = chain.header.copy(timestamp=timestamp)
        tx_hash = self.w3.eth.send_raw_transaction(raw)
        receipt: Mapping[str, Any] = self.w3.eth.get_transaction_receipt(tx_hash)
        return receipt

    def mine(self, raw: bytes, label: str | None) -> Mapping[str, Any]:
        """Mine a new transaction now and journal it (fsync) before returning its receipt."""
        chain = self.tester.backend.chain
        timestamp = max(int(time.time()), int(chain.get_canonical_head().timestamp) + 1)
        receipt = self._apply(raw, timestamp)
        entry = JournalEntry(
            raw=raw,
            timestamp=timestamp,
            tx_hash=_hex(receipt["transactionHash"]),
            block_number=int(receipt["blockNumber"]),
            status=int(receipt["status"]),
            contract_address=_address_or_none(receipt.get("contractAddress")),
            label=label,
        )
        try:
            self.journal.append(entry)
        except OSError as exc:
            # The chain now holds a transaction the journal lacks; refuse to go on diverging.
            self.closed = True
            raise JournalError(f"could not append to journal {self.journal.path}: {exc}") from exc
        self._maybe_snapshot()
        return receipt

    def labelled(self, label: str) -> JournalEntry | None:
        return next((e for e in reversed(self.journal.entries) if e.label == label), None)

    def close(self) -> None:
        with self.lock:
            if not self.closed:
                self._maybe_snapshot(force=True)
            self.closed = True
            self.journal.close()


class InProcessChainBackend(Web3ChainBackend):
    """ChainBackend on an in-process py-evm chain persisted in `<state_dir>/evm-journal.jsonl`."""

    def __init__(self, state_dir: Path, key: ControllerKey, *, _node: _EvmNode | None = None) -> None:
        owner = _node is None
        node = _node if _node is not None else _EvmNode(state_dir / JOURNAL_FILE_NAME)
        try:
            super().__init__(node.w3, key, node.lock, node.chain_id)
            self._node = node
            self._owns_node = owner
            if owner:
                with self._boundary():
                    self._setup()
            else:
                registry = node.labelled("registry")
                assert registry is not None and registry.contract_address is not None
                self._bind_registry(registry.contract_address)
        except BaseException:
            if owner:
                node.close()
            raise

    def _setup(self) -> None:
        with self._lock:
            if self._w3.eth.get_balance(self._address) < FUND_BELOW_WEI:
                self._fund_from_faucet()
            entry = self._node.labelled("registry")
            if entry is None:
                receipt = self._transact(None, load_contract(REGISTRY).bytecode, label="registry")
                address = receipt.contract_address
                log.info("deployed FedgeRegistry at %s on the in-process chain", address)
            else:
                assert entry.contract_address is not None
                address = entry.contract_address
            self._bind_registry(address)
            owner = self._registry.functions.owner().call()
            if owner != self.controller_address:
                log.warning(
                    "FedgeRegistry %s is owned by %s, not by this controller key (%s): writes will fail with "
                    "NotOwner. Was the key changed?",
                    address,
                    owner,
                    self.controller_address,
                )

    def _fund_from_faucet(self) -> None:
        faucet = ControllerKey(FAUCET_KEY)
        tx = {
            "to": self.controller_address,
            "value": FUND_AMOUNT_WEI,
            "gas": TRANSFER_GAS,
            "nonce": self._w3.eth.get_transaction_count(to_checksum_address(faucet.address)),
            "chainId": self.chain_id,
            **self._fee_fields(),
        }
        receipt = self._node.mine(faucet.sign_transaction(tx), "fund")
        if receipt["status"] != 1:
            raise ChainError("funding the controller account on the in-process chain failed")

    # -- hooks --------------------------------------------------------------------------------------

    def _submit(self, raw: bytes, label: str | None) -> Any:
        return self._node.mine(raw, label)  # mined and journaled at once, under the lock

    def _await(self, pending: Any) -> Mapping[str, Any]:
        receipt: Mapping[str, Any] = pending
        return receipt

    def _gas_limit(self, call: dict[str, Any]) -> int:
        if not call.get("data") and "to" in call and not self._w3.eth.get_code(call["to"]):
            return TRANSFER_GAS
        return TX_GAS_LIMIT

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        with self._lock:
            yield

    def _check_open(self) -> None:
        if self._node.closed:
            self._closed = True
        super()._check_open()

    def with_signer(self, private_key: str) -> InProcessChainBackend:
        self._check_open()
        return InProcessChainBackend(
            self._node.journal.path.parent, ControllerKey(private_key), _node=self._node
        )

    def close(self) -> None:
        self._closed = True
        if self._owns_node:
            self._node.close()


def _address_or_none(value: object) -> str | None:
    return str(to_checksum_address(value)) if value else None
