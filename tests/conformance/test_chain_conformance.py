"""One ChainBackend conformance suite, run against every implementation (in-process EVM, real anvil),
including the seed's per-asset contracts reached through ``ChainBackend.seed_contracts``."""

from __future__ import annotations

import hashlib
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from eth_utils.crypto import keccak

from controller.chain import (
    AlreadyVerified,
    ChainBackend,
    ChainEvent,
    ChainUnavailable,
    InvalidRecord,
    NotOwner,
    RecordExists,
    RecordNotFound,
    make_chain_backend,
    participant_hash,
)
from controller.chain._web3 import Web3ChainBackend

ORG = "5d066d58-06de-47ab-a2f6-c8f413e21947"
DEV = "0c8a5c4e-1b0f-4a43-9a7e-2b7b8f3d9e10"


def sha(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def md5(text: str) -> bytes:
    return hashlib.md5(text.encode()).digest()


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4()}"


def only_event(events: tuple[ChainEvent, ...], name: str) -> ChainEvent:
    matching = [e for e in events if e.name == name]
    assert len(matching) == 1, events
    return matching[0]


class ChainConformance:
    """Subclasses provide a `backend` fixture: a fresh registry, signed by a funded controller key."""

    @pytest.fixture
    def other(self, backend: ChainBackend) -> Iterator[ChainBackend]:
        """A second funded account on the same chain, which owns nothing (``with_signer`` and ``transfer``
        are test support of the implementations, not part of the ChainBackend interface)."""
        assert isinstance(backend, Web3ChainBackend)
        view = backend.with_signer("0x" + os.urandom(32).hex())
        backend.transfer(view.controller_address, 10**18)
        yield view
        view.close()

    def register_dataset(self, backend: ChainBackend, dataset_id: str | None = None) -> str:
        dataset_id = dataset_id or new_id("ds")
        backend.register_dataset(dataset_id, ORG, "(128,128,3)", 1_840_000, sha(dataset_id), md5(dataset_id))
        return dataset_id

    def register_model(self, backend: ChainBackend) -> str:
        dataset_id = self.register_dataset(backend)
        model_id = new_id("model")
        backend.register_model(model_id, ORG, DEV, dataset_id, sha("image:" + model_id))
        return model_id

    # -- datasets -----------------------------------------------------------------------------------

    def test_register_dataset_emits_dataset_registered(self, backend: ChainBackend) -> None:
        dataset_id = new_id("ds")
        receipt = backend.register_dataset(dataset_id, ORG, "(128,128,3)", 1_840_000, sha("a"), md5("a"))
        event = only_event(receipt.events, "DatasetRegistered")
        assert event.address == backend.registry_address
        assert event.args == {
            "datasetKey": keccak(text=dataset_id),
            "datasetId": dataset_id,
            "organizationId": ORG,
            "sha256Digest": sha("a"),
            "sizeBytes": 1_840_000,
        }

    def test_receipt_names_registry_block_and_gas(self, backend: ChainBackend) -> None:
        first = backend.register_dataset(new_id("ds"), ORG, "(1,)", 1, sha("a"), md5("a"))
        second = backend.register_dataset(new_id("ds"), ORG, "(1,)", 1, sha("b"), md5("b"))
        assert first.contract_address == backend.registry_address
        assert second.block_number > first.block_number
        assert 50_000 < first.gas_used < 300_000
        assert first.tx_hash.startswith("0x") and len(first.tx_hash) == 66

    def test_get_dataset_returns_every_field(self, backend: ChainBackend) -> None:
        dataset_id = new_id("ds")
        backend.register_dataset(dataset_id, ORG, "(128,128,3)", 2**40, sha("x"), md5("x"))
        record = backend.get_dataset(dataset_id)
        assert (record.dataset_id, record.organization_id, record.samples_dimension) == (
            dataset_id,
            ORG,
            "(128,128,3)",
        )
        assert (record.size_bytes, record.sha256, record.md5) == (2**40, sha("x"), md5("x"))
        assert record.contract_address == backend.registry_address
        assert record.registered_at > 1_600_000_000

    def test_register_same_dataset_twice_raises_record_exists(self, backend: ChainBackend) -> None:
        dataset_id = self.register_dataset(backend)
        with pytest.raises(RecordExists) as caught:
            backend.register_dataset(dataset_id, "other-org", "(1,)", 1, sha("b"), md5("b"))
        assert caught.value.contract_error == "FedgeRegistryDatasetExists"
        assert caught.value.contract_args == {"datasetId": dataset_id}
        assert backend.get_dataset(dataset_id).organization_id == ORG

    def test_get_unknown_dataset_raises_record_not_found(self, backend: ChainBackend) -> None:
        with pytest.raises(RecordNotFound) as caught:
            backend.get_dataset("no-such-dataset")
        assert caught.value.contract_args == {"datasetId": "no-such-dataset"}

    def test_zero_sha256_is_rejected(self, backend: ChainBackend) -> None:
        with pytest.raises(InvalidRecord):
            backend.register_dataset(new_id("ds"), ORG, "(1,)", 1, bytes(32), md5("a"))

    # -- models -------------------------------------------------------------------------------------

    def test_register_model_on_unknown_dataset_raises_record_not_found(self, backend: ChainBackend) -> None:
        with pytest.raises(RecordNotFound) as caught:
            backend.register_model(new_id("model"), ORG, DEV, "no-such-dataset", sha("img"))
        assert caught.value.contract_error == "FedgeRegistryUnknownDataset"

    def test_registered_model_is_unverified(self, backend: ChainBackend) -> None:
        dataset_id = self.register_dataset(backend)
        model_id = new_id("model")
        receipt = backend.register_model(model_id, ORG, DEV, dataset_id, sha("img"))
        assert only_event(receipt.events, "ModelRegistered").args["datasetId"] == dataset_id
        record = backend.get_model(model_id)
        assert (record.organization_id, record.developer_id, record.dataset_id) == (ORG, DEV, dataset_id)
        assert record.training_digest == sha("img")
        assert (record.verified, record.result_hash, record.verified_at) == (False, None, None)

    def test_verify_emits_verified_with_args(self, backend: ChainBackend) -> None:
        model_id = self.register_model(backend)
        receipt = backend.verify_model(model_id, sha("result"))
        event = only_event(receipt.events, "Verified")
        assert event.address == backend.registry_address
        verified_at = event.args["verifiedAt"]
        assert isinstance(verified_at, int) and verified_at > 1_600_000_000
        assert event.args == {
            "modelKey": keccak(text=model_id),
            "modelId": model_id,
            "resultHash": sha("result"),
            "verifiedAt": verified_at,
        }

    def test_verify_stores_result_hash(self, backend: ChainBackend) -> None:
        model_id = self.register_model(backend)
        receipt = backend.verify_model(model_id, sha("result"))
        record = backend.get_model(model_id)
        assert (record.verified, record.result_hash) == (True, sha("result"))
        assert record.verified_at == only_event(receipt.events, "Verified").args["verifiedAt"]

    def test_second_verify_raises_already_verified(self, backend: ChainBackend) -> None:
        model_id = self.register_model(backend)
        backend.verify_model(model_id, sha("first"))
        with pytest.raises(AlreadyVerified) as caught:
            backend.verify_model(model_id, sha("second"))
        assert caught.value.contract_error == "FedgeRegistryAlreadyVerified"
        assert caught.value.contract_args == {"modelId": model_id, "resultHash": sha("first")}
        assert backend.get_model(model_id).result_hash == sha("first")

    def test_verify_from_another_account_raises_not_owner(
        self, backend: ChainBackend, other: ChainBackend
    ) -> None:
        model_id = self.register_model(backend)
        with pytest.raises(NotOwner) as caught:
            other.verify_model(model_id, sha("forged"))
        assert caught.value.contract_error == "FedgeRegistryUnauthorized"
        assert caught.value.contract_args == {"caller": other.controller_address}
        assert backend.get_model(model_id).verified is False

    def test_register_from_another_account_raises_not_owner(
        self, backend: ChainBackend, other: ChainBackend
    ) -> None:
        with pytest.raises(NotOwner):
            other.register_dataset(new_id("ds"), ORG, "(1,)", 1, sha("a"), md5("a"))

    def test_verify_unknown_model_raises_record_not_found(self, backend: ChainBackend) -> None:
        with pytest.raises(RecordNotFound):
            backend.verify_model("no-such-model", sha("r"))

    # -- artifacts ----------------------------------------------------------------------------------

    def test_record_artifact_round_trip(self, backend: ChainBackend) -> None:
        model_id = self.register_model(backend)
        backend.record_artifact(model_id, 1, "onnx", sha("onnx"))
        receipt = backend.record_artifact(model_id, 2, "quantized-int8", sha("int8"), source_version=1)
        assert only_event(receipt.events, "ArtifactRecorded").args == {
            "modelKey": keccak(text=model_id),
            "modelId": model_id,
            "version": 2,
            "kind": "quantized-int8",
            "sha256Digest": sha("int8"),
            "sourceVersion": 1,
        }
        artifact = backend.get_artifact(model_id, 2)
        assert (artifact.model_id, artifact.version, artifact.kind) == (model_id, 2, "quantized-int8")
        assert (artifact.sha256, artifact.source_version) == (sha("int8"), 1)
        assert artifact.contract_address == backend.registry_address

    def test_artifact_from_unknown_source_version_raises_record_not_found(
        self, backend: ChainBackend
    ) -> None:
        model_id = self.register_model(backend)
        with pytest.raises(RecordNotFound) as caught:
            backend.record_artifact(model_id, 2, "quantized-int8", sha("int8"), source_version=1)
        assert caught.value.contract_args == {"modelId": model_id, "version": 1}

    def test_same_artifact_version_twice_raises_record_exists(self, backend: ChainBackend) -> None:
        model_id = self.register_model(backend)
        backend.record_artifact(model_id, 1, "onnx", sha("onnx"))
        with pytest.raises(RecordExists):
            backend.record_artifact(model_id, 1, "onnx", sha("other"))

    def test_unknown_artifact_raises_record_not_found(self, backend: ChainBackend) -> None:
        model_id = self.register_model(backend)
        with pytest.raises(RecordNotFound):
            backend.get_artifact(model_id, 7)

    # -- federated-learning runs --------------------------------------------------------------------

    def test_fl_run_round_trip(self, backend: ChainBackend) -> None:
        model_id = self.register_model(backend)
        run_id = new_id("run")
        devices = ["device-c", "device-a", "device-b"]
        backend.record_fl_run(
            run_id, devices, 5, "fedprox", sha("final"), dp_epsilon=2.5, dp_delta=1e-5, he_enabled=True,
            model_id=model_id,
        )  # fmt: skip
        run = backend.get_fl_run(run_id)
        expected = tuple(sorted(participant_hash(d) for d in devices))
        assert run.participant_hashes == expected
        assert run.participants_digest == keccak(b"".join(expected))
        assert (run.rounds, run.strategy, run.dp_epsilon, run.dp_delta) == (5, "fedprox", 2.5, 1e-5)
        assert (run.he_enabled, run.final_model_hash, run.model_id) == (True, sha("final"), model_id)

    def test_fl_run_event_lists_participant_hashes(self, backend: ChainBackend) -> None:
        run_id = new_id("run")
        receipt = backend.record_fl_run(run_id, ["d1", "d2"], 1, "fedavg", sha("final"))
        assert only_event(receipt.events, "FLRunRecorded").args == {
            "runKey": keccak(text=run_id),
            "runId": run_id,
            "participantHashes": tuple(sorted((participant_hash("d1"), participant_hash("d2")))),
            "finalModelHash": sha("final"),
        }

    def test_fl_run_without_dp_or_model(self, backend: ChainBackend) -> None:
        run_id = new_id("run")
        backend.record_fl_run(run_id, ["d1"], 3, "fedavg", sha("final"))
        run = backend.get_fl_run(run_id)
        assert (run.dp_epsilon, run.dp_delta, run.he_enabled, run.model_id) == (None, None, False, None)

    def test_same_fl_run_twice_raises_record_exists(self, backend: ChainBackend) -> None:
        run_id = new_id("run")
        backend.record_fl_run(run_id, ["d1"], 1, "fedavg", sha("final"))
        with pytest.raises(RecordExists):
            backend.record_fl_run(run_id, ["d2"], 1, "fedavg", sha("final"))

    def test_unknown_fl_run_raises_record_not_found(self, backend: ChainBackend) -> None:
        with pytest.raises(RecordNotFound):
            backend.get_fl_run("no-such-run")

    # -- federated-learning rounds (the audit trail) ------------------------------------------------

    def test_fl_round_round_trip_and_event(self, backend: ChainBackend) -> None:
        run_id = new_id("run")
        receipt = backend.record_fl_round(run_id, 1, sha("root-1"), sha("aggregate-1"), 3)
        assert only_event(receipt.events, "FLRoundRecorded").args == {
            "runKey": keccak(text=run_id),
            "runId": run_id,
            "round": 1,
            "updatesRoot": sha("root-1"),
            "aggregateHash": sha("aggregate-1"),
            "updateCount": 3,
        }
        backend.record_fl_round(run_id, 2, sha("root-2"), sha("aggregate-2"), 1)
        first, second = backend.get_fl_round(run_id, 1), backend.get_fl_round(run_id, 2)
        assert (first.updates_root, first.aggregate_hash, first.update_count) == (
            sha("root-1"), sha("aggregate-1"), 3,
        )  # fmt: skip
        assert (second.updates_root, second.update_count, second.round) == (sha("root-2"), 1, 2)
        assert first.recorded_block == receipt.block_number and first.recorded_at > 0
        assert first.contract_address == backend.registry_address

    def test_fl_round_is_write_once(self, backend: ChainBackend) -> None:
        run_id = new_id("run")
        backend.record_fl_round(run_id, 1, sha("root"), sha("aggregate"), 2)
        with pytest.raises(
            RecordExists, match=r"round 1 of federated-learning run .* already recorded"
        ) as info:
            backend.record_fl_round(run_id, 1, sha("other root"), sha("other aggregate"), 2)
        assert info.value.contract_error == "FedgeRegistryRoundExists"
        assert info.value.contract_args["updatesRoot"] == sha("root")
        assert backend.get_fl_round(run_id, 1).updates_root == sha("root")  # the first write stands

    def test_unknown_fl_round_raises_record_not_found(self, backend: ChainBackend) -> None:
        run_id = new_id("run")
        backend.record_fl_round(run_id, 1, sha("root"), sha("aggregate"), 2)
        with pytest.raises(RecordNotFound, match="round 2"):
            backend.get_fl_round(run_id, 2)

    @pytest.mark.parametrize(
        ("round_", "root", "aggregate", "count"),
        [(0, sha("r"), sha("a"), 1), (1, bytes(32), sha("a"), 1), (1, sha("r"), bytes(32), 1),
         (1, sha("r"), sha("a"), 0), (1, b"short", sha("a"), 1), (2**32, sha("r"), sha("a"), 1)],
    )  # fmt: skip
    def test_invalid_fl_round_is_refused_before_sending(
        self, backend: ChainBackend, round_: int, root: bytes, aggregate: bytes, count: int
    ) -> None:
        with pytest.raises(InvalidRecord):
            backend.record_fl_round(new_id("run"), round_, root, aggregate, count)

    def test_only_the_owner_records_fl_rounds(self, backend: ChainBackend, other: ChainBackend) -> None:
        with pytest.raises(NotOwner):
            other.record_fl_round(new_id("run"), 1, sha("root"), sha("aggregate"), 1)

    # -- per-asset contracts (seed admin routes) ----------------------------------------------------

    def deploy_model_contract(self, backend: ChainBackend) -> str:
        receipt = backend.seed_contracts.deploy(
            "model",
            {
                "model_id": "m-1",
                "organization_id": ORG,
                "developer_id": DEV,
                "dataset_id": "ds-1",
                "train_image_hash": "sha256:" + sha("img").hex(),
            },
        )
        return receipt.contract_address

    def test_deploy_dataset_contract_is_described_seed_style(self, backend: ChainBackend) -> None:
        receipt = backend.seed_contracts.deploy(
            "dataset",
            {
                "dataset_id": "ds-1",
                "organization_id": ORG,
                "samples_dimension": "(128,128,3)",
                "size_bytes": 1_840_000,
                "sha256": sha("data").hex(),
                "hash": md5("data").hex(),
            },
        )
        assert receipt.contract_address not in ("", backend.registry_address)
        assert only_event(receipt.events, "DatasetRegistered").address == receipt.contract_address
        described = backend.seed_contracts.describe(receipt.contract_address)
        registered_at = described.pop("registered_at")
        assert isinstance(registered_at, int) and registered_at > 1_600_000_000
        assert described == {
            "contract_type": "dataset",
            "address": receipt.contract_address,
            "dataset_id": "ds-1",
            "organization_id": ORG,
            "samples_dimension": "(128,128,3)",
            "size_bytes": 1_840_000,
            "hash": md5("data").hex(),
            "sha256": sha("data").hex(),
            "registrar": backend.controller_address,
        }

    def test_deployed_model_contract_is_described_before_verify(self, backend: ChainBackend) -> None:
        address = self.deploy_model_contract(backend)
        described = backend.seed_contracts.describe(address)
        assert described["model_params"] == {
            "organization_id": ORG,
            "developer_id": DEV,
            "train_image_hash": sha("img").hex(),
            "res_hash": None,
        }
        assert described["data_params"] == {"dataset_id": "ds-1"}
        assert (described["verified"], described["owner"]) == (False, backend.controller_address)

    def test_verify_contract_emits_verified_and_stores_res_hash(self, backend: ChainBackend) -> None:
        address = self.deploy_model_contract(backend)
        receipt = backend.seed_contracts.verify(address, sha("result"))
        event = only_event(receipt.events, "Verified")
        assert (event.address, receipt.contract_address) == (address, address)
        assert event.args == {
            "verifier": backend.controller_address,
            "resultHash": sha("result"),
            "verifiedAt": event.args["verifiedAt"],
        }
        described = backend.seed_contracts.describe(address)
        assert described["model_params"]["res_hash"] == sha("result").hex()  # type: ignore[index]
        assert described["verified_at"] == event.args["verifiedAt"]

    def test_verify_contract_twice_raises_already_verified(self, backend: ChainBackend) -> None:
        address = self.deploy_model_contract(backend)
        backend.seed_contracts.verify(address, sha("first"))
        with pytest.raises(AlreadyVerified) as caught:
            backend.seed_contracts.verify(address, sha("second"))
        assert caught.value.contract_error == "ModelRecordAlreadyVerified"
        assert caught.value.contract_args == {"resultHash": sha("first")}

    def test_verify_contract_from_another_account_raises_not_owner(
        self, backend: ChainBackend, other: ChainBackend
    ) -> None:
        address = self.deploy_model_contract(backend)
        with pytest.raises(NotOwner) as caught:
            other.seed_contracts.verify(address, sha("forged"))
        assert caught.value.contract_error == "ModelRecordUnauthorized"
        assert caught.value.contract_args == {"caller": other.controller_address}
        assert backend.seed_contracts.describe(address)["verified"] is False

    def test_describe_registry_or_empty_address_raises_record_not_found(self, backend: ChainBackend) -> None:
        for address in (backend.registry_address, "0x" + os.urandom(20).hex()):
            with pytest.raises(RecordNotFound):
                backend.seed_contracts.describe(address)

    def test_verify_contract_on_dataset_contract_raises_record_not_found(self, backend: ChainBackend) -> None:
        receipt = backend.seed_contracts.deploy(
            "dataset",
            {"dataset_id": "d", "organization_id": ORG, "samples_dimension": "(1,)", "size_bytes": 1,
             "sha256": sha("d")},
        )  # fmt: skip
        with pytest.raises(RecordNotFound):
            backend.seed_contracts.verify(receipt.contract_address, sha("r"))

    def test_deploy_contract_with_unknown_field_raises_invalid_record(self, backend: ChainBackend) -> None:
        with pytest.raises(InvalidRecord):
            backend.seed_contracts.deploy("model", {"model_id": "m", "colour": "blue"})

    # -- lifecycle ----------------------------------------------------------------------------------

    def test_concurrent_registrations_all_land(self, backend: ChainBackend) -> None:
        ids = [new_id("ds") for _ in range(12)]
        errors: list[BaseException] = []

        def register(chunk: list[str]) -> None:
            try:
                for dataset_id in chunk:
                    self.register_dataset(backend, dataset_id)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=register, args=(ids[i::4],)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == []
        assert {backend.get_dataset(i).sha256 for i in ids} == {sha(i) for i in ids}

    def test_racing_registrations_of_one_id_yield_one_record_exists(self, backend: ChainBackend) -> None:
        dataset_id = new_id("ds")
        barrier = threading.Barrier(4)
        outcomes: list[str] = []

        def register(n: int) -> None:
            barrier.wait(10)
            try:
                backend.register_dataset(dataset_id, f"org-{n}", "(1,)", n, sha(str(n)), md5(str(n)))
                outcomes.append("ok")
            except RecordExists:
                outcomes.append("exists")

        threads = [threading.Thread(target=register, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert sorted(outcomes) == ["exists", "exists", "exists", "ok"]

    def test_health_passes_on_a_live_chain(self, backend: ChainBackend) -> None:
        backend.health()

    def test_closed_backend_raises_chain_unavailable(self, backend: ChainBackend) -> None:
        backend.close()
        with pytest.raises(ChainUnavailable):
            backend.get_dataset("any")
        with pytest.raises(ChainUnavailable):
            backend.health()

    def test_repr_shows_address_not_key(self, backend: ChainBackend, key_hex: str) -> None:
        text = repr(backend) + str(backend)
        assert backend.controller_address in text
        assert key_hex.removeprefix("0x").lower() not in text.lower()


class TestInProcessEvm(ChainConformance):
    @pytest.fixture
    def key_hex(self) -> str:
        return "0x" + os.urandom(32).hex()

    @pytest.fixture
    def backend(self, tmp_path: Path, key_hex: str) -> Iterator[ChainBackend]:
        backend = make_chain_backend("evm", tmp_path, private_key=key_hex)
        yield backend
        backend.close()


class TestAnvilJsonRpc(ChainConformance):
    @pytest.fixture
    def key_hex(self) -> str:
        return "0x" + os.urandom(32).hex()

    @pytest.fixture
    def backend(self, tmp_path: Path, key_hex: str, anvil_url: str) -> Iterator[ChainBackend]:
        backend = make_chain_backend(
            "jsonrpc", tmp_path, rpc_url=anvil_url, private_key=key_hex, chain_id=31337
        )
        yield backend
        backend.close()
