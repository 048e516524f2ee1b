"""What both backends share: encoding calls, signing, decoding records, events and reverts."""

from __future__ import annotations

import contextlib
import logging
import math
import threading
from abc import abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from eth_typing import ChecksumAddress
from eth_utils.crypto import keccak
from web3 import Web3

from controller.chain._reverts import RevertDecoder, translate
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
from controller.chain.contracts import ALL_CONTRACTS, DATASET_RECORD, MODEL_RECORD, REGISTRY, load_contract
from controller.chain.errors import ChainError, ChainUnavailable, InvalidRecord, RecordNotFound
from controller.chain.keys import ControllerKey
from controller.chain.seed import ContractKind, SeedContracts
from controller.observability.events import timed_chain_tx

log = logging.getLogger(__name__)

UINT32_MAX = 2**32 - 1
UINT64_MAX = 2**64 - 1
EPSILON_SCALE = 10**6
DELTA_SCALE = 10**18
NONCE_ATTEMPTS = 3


class Web3ChainBackend(ChainBackend):
    """A ChainBackend over a web3 connection; subclasses say how a signed transaction gets mined."""

    def __init__(self, w3: Web3, key: ControllerKey, lock: threading.RLock, chain_id: int) -> None:
        lean_middleware(w3)
        self._w3 = w3
        self._key = key
        self._lock = lock
        self.chain_id = chain_id
        self._address: ChecksumAddress = to_checksum_address(key.address)
        self.controller_address = self._address
        self.registry_address = ""
        self._closed = False
        abis = {name: load_contract(name).abi for name in ALL_CONTRACTS}
        self._decoder = RevertDecoder(abis.values())
        self._factories = {
            name: w3.eth.contract(abi=abi, bytecode=load_contract(name).bytecode)
            for name, abi in abis.items()
        }
        self._events: dict[bytes, Any] = {}
        for name in ALL_CONTRACTS:
            factory = self._factories[name]
            for item in abis[name]:
                if item.get("type") == "event":
                    signature = f"{item['name']}({','.join(_type_of(i) for i in item['inputs'])})"
                    self._events.setdefault(keccak(text=signature), factory.events[item["name"]]())
        self._registry: Any = None
        self._seed = Web3SeedContracts(self)

    # -- hooks --------------------------------------------------------------------------------------

    @abstractmethod
    def _submit(self, raw: bytes, label: str | None) -> Any:
        """Send one signed raw transaction (the caller holds the lock); returns what _await takes."""

    @abstractmethod
    def _await(self, pending: Any) -> Mapping[str, Any]:
        """The receipt of a submitted transaction, once mined (called without the lock)."""

    @abstractmethod
    def _gas_limit(self, call: dict[str, Any]) -> int:
        """Gas limit for a transaction already simulated successfully."""

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        """Guard for read calls; the in-process chain needs its lock, a node does not."""
        yield

    def _simulate(self, call: dict[str, Any]) -> None:
        """Run the transaction as eth_call first, so a revert raises its decoded error and costs nothing."""
        self._w3.eth.call(call)  # type: ignore[arg-type]

    def _next_nonce(self) -> int:
        nonce: int = self._w3.eth.get_transaction_count(self._address, "pending")
        return nonce

    def _after_send(self, nonce: int) -> None:
        """Called after a transaction with `nonce` was accepted."""

    def _nonce_conflict(self, exc: Exception) -> bool:
        """Whether a send failed because its nonce was used meanwhile (then it is re-signed and retried)."""
        return False

    def _simulate_as_call(self, call: dict[str, Any]) -> None:
        """Rerun a reverted transaction as eth_call; raise its decoded contract error if it has one."""
        try:
            self._w3.eth.call(call)  # type: ignore[arg-type]
        except Exception as exc:
            error = translate(exc, self._decoder)
            if error.contract_error is not None:
                raise error from exc

    def _fee_fields(self) -> dict[str, int]:
        block = self._w3.eth.get_block("latest")
        base_fee = block.get("baseFeePerGas")
        if base_fee is None:
            return {"gasPrice": int(self._w3.eth.gas_price)}
        try:
            tip = int(self._w3.eth.max_priority_fee)
        except Exception:
            tip = 10**9
        return {"maxFeePerGas": 2 * int(base_fee) + tip, "maxPriorityFeePerGas": tip}

    # -- plumbing -----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _boundary(self) -> Iterator[None]:
        """Nothing but ChainError leaves a public method."""
        try:
            yield
        except ChainError:
            raise
        except Exception as exc:
            raise translate(exc, self._decoder) from exc

    def _check_open(self) -> None:
        if self._closed:
            raise ChainUnavailable("chain backend is closed")

    def _bind_registry(self, address: str) -> None:
        self.registry_address = to_checksum_address(address)
        self._registry = self._w3.eth.contract(address=self.registry_address, abi=load_contract(REGISTRY).abi)

    @timed_chain_tx
    def _transact(
        self, to: str | None, data: bytes, *, value: int = 0, label: str | None = None
    ) -> TxReceipt:
        """Simulate (so reverts surface as decoded errors, no transaction spent), sign, send, await."""
        self._check_open()
        call: dict[str, Any] = {"from": self.controller_address, "data": data, "value": value}
        if to is not None:
            call["to"] = to
        with self._lock:
            self._simulate(call)
            tx: dict[str, Any] = {
                "data": data,
                "value": value,
                "gas": self._gas_limit(call),
                "chainId": self.chain_id,
                **self._fee_fields(),
            }
            if to is not None:
                tx["to"] = to
            for attempt in range(1, NONCE_ATTEMPTS + 1):
                tx["nonce"] = self._next_nonce()
                try:
                    pending = self._submit(self._key.sign_transaction(tx), label)
                except Exception as exc:
                    if attempt < NONCE_ATTEMPTS and self._nonce_conflict(exc):
                        log.info("nonce %d was taken (another signer on this key?); retrying", tx["nonce"])
                        continue
                    raise
                self._after_send(tx["nonce"])
                break
        # Outside the lock: other threads' transactions can join the same block meanwhile.
        receipt = self._await(pending)
        tx_hash = _hex(receipt["transactionHash"])
        if receipt["status"] != 1:
            # Lost a race (the state changed between simulation and mining): say why, if a rerun tells.
            self._simulate_as_call(call)
            raise ChainError(f"transaction {tx_hash} was mined but reverted")
        created = receipt.get("contractAddress")
        holder = to_checksum_address(created) if created else (to or "")
        return TxReceipt(
            tx_hash=tx_hash,
            block_number=int(receipt["blockNumber"]),
            gas_used=int(receipt["gasUsed"]),
            contract_address=holder,
            events=self._decode_events(receipt["logs"]),
        )

    def _decode_events(self, logs: Sequence[Mapping[str, Any]]) -> tuple[ChainEvent, ...]:
        events = []
        for entry in logs:
            topics = entry.get("topics") or []
            event = self._events.get(bytes(topics[0])) if topics else None
            if event is None:
                continue
            decoded = event.process_log(entry)
            events.append(
                ChainEvent(
                    name=str(decoded["event"]),
                    address=to_checksum_address(decoded["address"]),
                    args={k: _plain(v) for k, v in decoded["args"].items()},
                )
            )
        return tuple(events)

    def _registry_tx(self, function: str, *args: object) -> TxReceipt:
        data = _hexbytes(self._registry.encode_abi(function, args=list(args)))
        receipt = self._transact(self.registry_address, data)
        return receipt

    def _registry_call(self, function: str, *args: object) -> Any:
        self._check_open()
        with self._reading():
            return getattr(self._registry.functions, function)(*args).call()

    # -- datasets and models ------------------------------------------------------------------------

    def register_dataset(
        self,
        dataset_id: str,
        organization_id: str,
        samples_dimension: str,
        size_bytes: int,
        sha256: bytes,
        md5: bytes,
    ) -> TxReceipt:
        _require_id("dataset_id", dataset_id)
        _require_str("organization_id", organization_id)
        _require_str("samples_dimension", samples_dimension)
        _require_int("size_bytes", size_bytes, 0, UINT64_MAX)
        _require_digest("sha256", sha256, 32)
        _require_digest("md5", md5, 16, allow_zero=True)
        with self._boundary():
            return self._registry_tx(
                "registerDataset", dataset_id, organization_id, samples_dimension, size_bytes, sha256, md5
            )

    def get_dataset(self, dataset_id: str) -> DatasetOnChain:
        _require_str("dataset_id", dataset_id)
        with self._boundary():
            organization_id, samples_dimension, sha, md5, size, registered_at = self._registry_call(
                "getDataset", dataset_id
            )
        return DatasetOnChain(
            dataset_id=dataset_id,
            organization_id=organization_id,
            samples_dimension=samples_dimension,
            size_bytes=int(size),
            sha256=bytes(sha),
            md5=bytes(md5),
            contract_address=self.registry_address,
            registered_at=int(registered_at),
        )

    def register_model(
        self,
        model_id: str,
        organization_id: str,
        developer_id: str,
        dataset_id: str,
        training_digest: bytes,
    ) -> TxReceipt:
        _require_id("model_id", model_id)
        _require_str("organization_id", organization_id)
        _require_str("developer_id", developer_id)
        _require_str("dataset_id", dataset_id)
        _require_digest("training_digest", training_digest, 32)
        with self._boundary():
            return self._registry_tx(
                "registerModel", model_id, organization_id, developer_id, dataset_id, training_digest
            )

    def verify_model(self, model_id: str, result_hash: bytes) -> TxReceipt:
        _require_str("model_id", model_id)
        _require_digest("result_hash", result_hash, 32)
        with self._boundary():
            return self._registry_tx("verify", model_id, result_hash)

    def get_model(self, model_id: str) -> ModelOnChain:
        _require_str("model_id", model_id)
        with self._boundary():
            organization_id, developer_id, dataset_id, digest, result, registered_at, verified_at = (
                self._registry_call("getModel", model_id)
            )
        verified = int(verified_at) != 0
        return ModelOnChain(
            model_id=model_id,
            organization_id=organization_id,
            developer_id=developer_id,
            dataset_id=dataset_id,
            training_digest=bytes(digest),
            verified=verified,
            result_hash=bytes(result) if verified else None,
            verified_at=int(verified_at) if verified else None,
            contract_address=self.registry_address,
            registered_at=int(registered_at),
        )

    # -- provenance ---------------------------------------------------------------------------------

    def record_artifact(
        self, model_id: str, version: int, kind: str, sha256: bytes, source_version: int = 0
    ) -> TxReceipt:
        _require_str("model_id", model_id)
        _require_int("version", version, 1, UINT32_MAX)
        _require_id("kind", kind)
        _require_digest("sha256", sha256, 32)
        _require_int("source_version", source_version, 0, UINT32_MAX)
        if source_version == version:
            raise InvalidRecord("source_version must differ from version")
        with self._boundary():
            return self._registry_tx("recordArtifact", model_id, version, kind, sha256, source_version)

    def get_artifact(self, model_id: str, version: int) -> ArtifactOnChain:
        _require_str("model_id", model_id)
        _require_int("version", version, 0, UINT32_MAX)
        with self._boundary():
            sha, kind, source_version, recorded_at = self._registry_call("getArtifact", model_id, version)
        return ArtifactOnChain(
            model_id=model_id,
            version=version,
            kind=kind,
            sha256=bytes(sha),
            source_version=int(source_version),
            contract_address=self.registry_address,
            recorded_at=int(recorded_at),
        )

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
        _require_id("run_id", run_id)
        if isinstance(participant_ids, str) or not participant_ids:
            raise InvalidRecord("participant_ids must be a non-empty sequence of device ids")
        for device_id in participant_ids:
            _require_id("participant id", device_id)
        if len(set(participant_ids)) != len(participant_ids):
            raise InvalidRecord("participant_ids contains duplicates")
        _require_int("rounds", rounds, 1, UINT32_MAX)
        _require_str("strategy", strategy)
        _require_digest("final_model_hash", final_model_hash, 32)
        if not isinstance(he_enabled, bool):
            raise InvalidRecord("he_enabled must be a bool")
        if model_id is not None:
            _require_id("model_id", model_id)
        if (dp_epsilon is None) != (dp_delta is None):
            raise InvalidRecord("dp_epsilon and dp_delta go together (both or neither)")
        epsilon = _scaled("dp_epsilon", dp_epsilon, EPSILON_SCALE, upper=None)
        delta = _scaled("dp_delta", dp_delta, DELTA_SCALE, upper=1.0)
        hashes = sorted(participant_hash(d) for d in participant_ids)
        run = (run_id, hashes, rounds, strategy, epsilon, delta, he_enabled, final_model_hash, model_id or "")
        with self._boundary():
            return self._registry_tx("recordFLRun", run)

    def get_fl_run(self, run_id: str) -> FLRunOnChain:
        _require_str("run_id", run_id)
        with self._boundary():
            (
                digest,
                final_hash,
                strategy,
                model_id,
                count,
                rounds,
                epsilon,
                delta,
                he_enabled,
                recorded_at,
                recorded_block,
            ) = self._registry_call("getFLRun", run_id)
            hashes = self._participant_hashes(run_id, int(recorded_block))
        if len(hashes) != int(count) or keccak(b"".join(hashes)) != bytes(digest):
            raise ChainError(
                f"participants of run {run_id!r} in the event log do not match the stored digest"
            )
        return FLRunOnChain(
            run_id=run_id,
            participant_hashes=hashes,
            participants_digest=bytes(digest),
            rounds=int(rounds),
            strategy=strategy,
            dp_epsilon=int(epsilon) / EPSILON_SCALE if epsilon else None,
            dp_delta=int(delta) / DELTA_SCALE if delta else None,
            he_enabled=bool(he_enabled),
            final_model_hash=bytes(final_hash),
            model_id=model_id or None,
            contract_address=self.registry_address,
            recorded_at=int(recorded_at),
        )

    def record_fl_round(
        self, run_id: str, round: int, updates_root: bytes, aggregate_hash: bytes, update_count: int
    ) -> TxReceipt:
        _require_id("run_id", run_id)
        _require_int("round", round, 1, UINT32_MAX)
        _require_digest("updates_root", updates_root, 32)
        _require_digest("aggregate_hash", aggregate_hash, 32)
        _require_int("update_count", update_count, 1, UINT32_MAX)
        with self._boundary():
            return self._registry_tx(
                "recordFLRound", run_id, round, updates_root, aggregate_hash, update_count
            )

    def get_fl_round(self, run_id: str, round: int) -> FLRoundOnChain:
        _require_str("run_id", run_id)
        _require_int("round", round, 0, UINT32_MAX)
        with self._boundary():
            root, aggregate, count, recorded_at, recorded_block = self._registry_call(
                "getFLRound", run_id, round
            )
        return FLRoundOnChain(
            run_id=run_id,
            round=round,
            updates_root=bytes(root),
            aggregate_hash=bytes(aggregate),
            update_count=int(count),
            contract_address=self.registry_address,
            recorded_at=int(recorded_at),
            recorded_block=int(recorded_block),
        )

    def _participant_hashes(self, run_id: str, block: int) -> tuple[bytes, ...]:
        event = self._registry.events.FLRunRecorded()
        topic0 = keccak(text="FLRunRecorded(bytes32,string,bytes32[],bytes32)")
        with self._reading():
            logs = self._w3.eth.get_logs(
                {
                    "address": to_checksum_address(self.registry_address),
                    "fromBlock": block,
                    "toBlock": block,
                    "topics": ["0x" + topic0.hex(), "0x" + keccak(text=run_id).hex()],
                }
            )
        for entry in logs:
            decoded = event.process_log(entry)
            if decoded["args"]["runId"] == run_id:
                return tuple(bytes(h) for h in decoded["args"]["participantHashes"])
        raise ChainError(f"FLRunRecorded event of run {run_id!r} not found in block {block}")

    # -- per-asset contracts ------------------------------------------------------------------------

    @property
    def seed_contracts(self) -> SeedContracts:
        return self._seed

    # -- accounts and lifecycle ---------------------------------------------------------------------

    def transfer(self, to_address: str, amount_wei: int) -> TxReceipt:
        """Send ether from the controller's account (fund another signer on a private chain). Not part of
        the ChainBackend interface: tests and operators' scripts call it on an implementation."""
        checksum = _require_address(to_address)
        _require_int("amount_wei", amount_wei, 1, 2**256 - 1)
        with self._boundary():
            receipt = self._transact(checksum, b"", value=amount_wei)
            return receipt

    @abstractmethod
    def with_signer(self, private_key: str) -> Web3ChainBackend:
        """A view of the same chain that signs with another key; closing it leaves this one open. Not part
        of the ChainBackend interface (tests use it to act as a second account)."""

    def health(self) -> None:
        with self._boundary():
            self._check_open()
            with self._reading():
                self._w3.eth.get_block_number()

    def __repr__(self) -> str:
        registry = self.registry_address or None
        return f"{type(self).__name__}(controller={self.controller_address}, registry={registry})"


class Web3SeedContracts(SeedContracts):
    """The seed's per-asset contracts over a Web3ChainBackend's connection, key and lock."""

    def __init__(self, chain: Web3ChainBackend) -> None:
        self._chain = chain

    def deploy(self, kind: ContractKind, args: Mapping[str, object]) -> TxReceipt:
        chain = self._chain
        if kind == "dataset":
            fields = _take(
                args,
                required=("dataset_id", "organization_id", "samples_dimension", "size_bytes", "sha256"),
                optional=("hash", "md5"),
            )
            if "hash" in fields and "md5" in fields:
                raise InvalidRecord("give the MD5 as `hash` or `md5`, not both")
            md5 = _digest_arg(fields.get("hash", fields.get("md5")), "hash", 16, allow_zero=True)
            values: tuple[object, ...] = (
                _require_id("dataset_id", fields["dataset_id"]),
                _require_str("organization_id", fields["organization_id"]),
                _require_str("samples_dimension", fields["samples_dimension"]),
                _require_int("size_bytes", fields["size_bytes"], 0, UINT64_MAX),
                _digest_arg(fields["sha256"], "sha256", 32),
                md5,
            )
            name = DATASET_RECORD
        elif kind == "model":
            fields = _take(
                args,
                required=("model_id", "organization_id", "developer_id", "dataset_id", "train_image_hash"),
                optional=(),
            )
            values = (
                _require_id("model_id", fields["model_id"]),
                _require_str("organization_id", fields["organization_id"]),
                _require_str("developer_id", fields["developer_id"]),
                _require_str("dataset_id", fields["dataset_id"]),
                _digest_arg(fields["train_image_hash"], "train_image_hash", 32),
            )
            name = MODEL_RECORD
        else:
            raise InvalidRecord(f"unknown contract kind {kind!r} (expected 'dataset' or 'model')")
        with chain._boundary():
            data = _hexbytes(chain._factories[name].constructor(*values).data_in_transaction)
            receipt = chain._transact(None, data)
            return receipt

    def describe(self, address: str) -> dict[str, object]:
        chain = self._chain
        checksum = _require_address(address)
        with chain._boundary():
            kind = self._record_kind(checksum)
            contract = chain._w3.eth.contract(
                address=to_checksum_address(checksum), abi=load_contract(kind).abi
            )
            with chain._reading():
                record = contract.functions.getRecord().call()
        if kind == DATASET_RECORD:
            dataset_id, organization_id, dims, sha, md5, size, registered_at, registrar = record
            return {
                "contract_type": "dataset",
                "address": checksum,
                "dataset_id": dataset_id,
                "organization_id": organization_id,
                "samples_dimension": dims,
                "size_bytes": int(size),
                "hash": bytes(md5).hex(),
                "sha256": bytes(sha).hex(),
                "registered_at": int(registered_at),
                "registrar": to_checksum_address(registrar),
            }
        (
            model_id,
            organization_id,
            developer_id,
            dataset_id,
            digest,
            result,
            registered_at,
            verified_at,
            owner,
        ) = record
        verified = int(verified_at) != 0
        return {
            "contract_type": "model",
            "address": checksum,
            "model_id": model_id,
            "owner": to_checksum_address(owner),
            "registered_at": int(registered_at),
            "verified": verified,
            "verified_at": int(verified_at) if verified else None,
            "model_params": {
                "organization_id": organization_id,
                "developer_id": developer_id,
                "train_image_hash": bytes(digest).hex(),
                "res_hash": bytes(result).hex() if verified else None,
            },
            "data_params": {"dataset_id": dataset_id},
        }

    def verify(self, address: str, result_hash: bytes) -> TxReceipt:
        chain = self._chain
        checksum = _require_address(address)
        _require_digest("result_hash", result_hash, 32)
        with chain._boundary():
            if self._record_kind(checksum) != MODEL_RECORD:
                raise RecordNotFound(f"{checksum} is a dataset record, not a model record")
            data = _hexbytes(chain._factories[MODEL_RECORD].encode_abi("verify", args=[result_hash]))
            receipt = chain._transact(checksum, data)
            return receipt

    def _record_kind(self, address: str) -> str:
        chain = self._chain
        chain._check_open()
        with chain._reading():
            code = bytes(chain._w3.eth.get_code(to_checksum_address(address)))
        for name in (DATASET_RECORD, MODEL_RECORD):
            if code == load_contract(name).deployed_bytecode:
                return name
        raise RecordNotFound(f"no DatasetRecord or ModelRecord contract at {address}")


def lean_middleware(w3: Web3) -> None:
    """Drop middleware we do not use: it costs an eth_chainId round trip per call (we sign locally for a
    chain id checked at start) or ENS lookups (we pass checksummed addresses only)."""
    for name in ("validation", "ens_name_to_address", "gas_price_strategy", "gas_estimate"):
        with contextlib.suppress(ValueError, KeyError):
            w3.middleware_onion.remove(name)


# -- validation helpers -----------------------------------------------------------------------------


def _require_str(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise InvalidRecord(f"{name} must be a string")
    return value


def _require_id(name: str, value: object) -> str:
    if not _require_str(name, value):
        raise InvalidRecord(f"{name} must not be empty")
    return str(value)


def _require_int(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidRecord(f"{name} must be an integer in [{low}, {high}]")
    return value


def _require_digest(name: str, value: object, size: int, *, allow_zero: bool = False) -> bytes:
    if not isinstance(value, bytes | bytearray) or len(value) != size:
        raise InvalidRecord(f"{name} must be {size} bytes")
    if not allow_zero and not any(value):
        raise InvalidRecord(f"{name} must not be all zero")
    return bytes(value)


def _digest_arg(value: object, name: str, size: int, *, allow_zero: bool = False) -> bytes:
    """A digest given as bytes or hex ('0x…', 'sha256:…' or plain); None means zero if allowed."""
    if value is None and allow_zero:
        return b"\x00" * size
    if isinstance(value, str):
        text = value.strip().lower()
        for prefix in ("0x", "sha256:", "md5:"):
            text = text.removeprefix(prefix)
        try:
            value = bytes.fromhex(text)
        except ValueError:
            raise InvalidRecord(f"{name} must be hex") from None
    return _require_digest(name, value, size, allow_zero=allow_zero)


def _require_address(address: object) -> str:
    if not isinstance(address, str) or not Web3.is_address(address):
        raise InvalidRecord(f"not an address: {address!r}")
    return to_checksum_address(address)


def _take(
    args: Mapping[str, object], *, required: tuple[str, ...], optional: tuple[str, ...]
) -> dict[str, object]:
    missing = [k for k in required if k not in args]
    unknown = sorted(set(args) - set(required) - set(optional))
    if missing or unknown:
        raise InvalidRecord(f"missing fields {missing}, unknown fields {unknown}")
    return dict(args)


def _scaled(name: str, value: float | None, scale: int, *, upper: float | None) -> int:
    if value is None:
        return 0
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise InvalidRecord(f"{name} must be a positive number")
    if upper is not None and value >= upper:
        raise InvalidRecord(f"{name} must be below {upper}")
    scaled = round(value * scale)
    if not 1 <= scaled <= UINT64_MAX:
        raise InvalidRecord(f"{name} is out of range (resolution 1/{scale})")
    return scaled


def _type_of(item: Mapping[str, Any]) -> str:
    kind = str(item["type"])
    if kind.startswith("tuple"):
        return "(" + ",".join(_type_of(c) for c in item["components"]) + ")" + kind[5:]
    return kind


def _plain(value: object) -> object:
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, list | tuple):
        return tuple(_plain(v) for v in value)
    return value


def to_checksum_address(value: object) -> ChecksumAddress:
    """Checksummed form of an address given as str or bytes."""
    return Web3.to_checksum_address(value)  # type: ignore[arg-type]


def _hex(value: object) -> str:
    if isinstance(value, bytes | bytearray):
        return "0x" + bytes(value).hex()
    text = str(value)
    return text if text.startswith("0x") else "0x" + text


def _hexbytes(value: object) -> bytes:
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    return bytes.fromhex(str(value).removeprefix("0x"))
