"""Every FL round on chain: the ServerApp's guard digests the accepted updates and hands out proofs, the
device's audit mod checks them, the controller records each round's root on the in-process EVM (one
transaction), serves ``GET /v1/fl/jobs/{id}/audit``, and ``fedge fl audit`` verifies it, or names the
tampered record.

The run here is the real ServerApp guard (``GuardedStrategy`` over Flower's FedAvg, ``HttpReporter`` to a
live controller) and the real device mod (``audit_mod``) without a Flower runtime in between: messages go
from one to the other in process. The same path under real SuperNodes is checked in test_flower_e2e.py.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    Metadata,
    MetricRecord,
    RecordDict,
)

from controller.chain.base import ChainBackend
from controller.config import ControllerSettings
from controller.db.models import FlAuditRound
from controller.federation.audit_verify import AuditMismatch, verify_audit
from controller.federation.base import FederationOutcome, FederationSpec, ReportCallback
from controller.federation.serverapp import GuardedStrategy, HttpReporter, ListReporter, save_arrays
from controller.federation.strategies import build_strategy
from controller.schemas.fl_audit import FlAuditOut
from controller.state import ControllerState, build_state
from controller.training.base import JobState
from edge_agent.learning.audit import AUDIT_DIR, audit_mod
from fedge_protocol.federation import CONFIG, TrainKey
from fedge_protocol.merkle import AUDIT_FAILED_CODE, AuditKey, MerkleTree, update_digest, verify_proof
from tests.conftest import ADMIN_TOKEN, LiveServer, fedge_cli
from tests.controller.federation.fl_helpers import ADMIN, enroll_direct, job_body, register_digits_model
from tests.controller.federation.test_fl_manager import ScriptedEngine


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a ServerApp process has set when Flower's strategies build their messages."""
    from flwr.supercore.task_identity import TaskIdentity

    for attr, value in (("_run_id", 1), ("_task_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, attr, value)


class FakeGrid:
    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return self.nodes


def _reply_to(msg: Message, content: RecordDict | Error) -> Message:
    """A device's reply as the SuperLink hands it to the ServerApp (source = the device's node)."""
    meta = Metadata(
        run_id=1, message_id=f"reply-{msg.metadata.dst_node_id}-{time.monotonic_ns()}",
        src_node_id=msg.metadata.dst_node_id, dst_node_id=0, reply_to_message_id="x", group_id="1",
        created_at=time.time(), ttl=60, message_type=msg.metadata.message_type,
    )  # fmt: skip
    return Message(content, metadata=meta)


@dataclass
class Device:
    """A device's ClientApp reduced to its handlers, wrapped in the real audit mod."""

    node_id: int
    state_dir: Path
    context: Context = field(init=False)
    tamper_train_reply: bool = False

    def __post_init__(self) -> None:
        self.context = Context(
            run_id=1, node_id=self.node_id, node_config={"fedge-state-dir": str(self.state_dir)},
            state=RecordDict(), run_config={},
        )  # fmt: skip

    def train(self, msg: Message, _ctx: Context) -> Message:
        arrays = msg.content.array_records["arrays"]
        rng = np.random.default_rng(self.node_id)
        new = {k: a.numpy() + rng.normal(0, 0.01, a.shape).astype(a.numpy().dtype) for k, a in arrays.items()}
        metrics = MetricRecord({"num-examples": 10 + self.node_id, "train_loss": 0.5})
        return Message(RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in new.items()}),
                                   "metrics": metrics}), reply_to=msg)  # fmt: skip

    def evaluate(self, msg: Message, _ctx: Context) -> Message:
        return Message(
            RecordDict({"metrics": MetricRecord({"num-examples": 10, "eval_loss": 0.3})}), reply_to=msg
        )

    def handle(self, msg: Message) -> Message:
        kind = msg.metadata.message_type
        reply = audit_mod(msg, self.context, self.train if kind == "train" else self.evaluate)
        if self.tamper_train_reply and kind == "train" and not reply.has_error():
            # what the device sent is not what reaches the server (changed in transit / by the server)
            arrays = reply.content.array_records["arrays"]
            name = sorted(arrays)[0]
            changed = arrays[name].numpy().copy()
            changed.flat[0] += 1.0
            arrays[name] = Array(changed)
        return _reply_to(msg, reply.error if reply.has_error() else reply.content)


def play_rounds(
    guard: GuardedStrategy,
    devices: list[Device],
    initial: dict[str, np.ndarray],
    rounds: int,
    job_id: str,
    *,
    before_evaluate: Callable[[list[Message]], None] | None = None,
) -> ArrayRecord:
    """Flower's round loop (Strategy.start) over in-process devices."""
    grid = FakeGrid([d.node_id for d in devices])
    by_node = {d.node_id: d for d in devices}
    arrays = ArrayRecord({k: Array(v) for k, v in initial.items()})
    for rnd in range(1, rounds + 1):
        config = ConfigRecord({TrainKey.JOB_ID: job_id})
        train = list(guard.configure_train(rnd, arrays, config, grid))  # type: ignore[arg-type]
        replies = [by_node[m.metadata.dst_node_id].handle(m) for m in train]
        aggregated, _ = guard.aggregate_train(rnd, replies)
        assert aggregated is not None
        arrays = aggregated
        evaluate = list(guard.configure_evaluate(rnd, arrays, config, grid))  # type: ignore[arg-type]
        if before_evaluate is not None:
            before_evaluate(evaluate)
        guard.aggregate_evaluate(rnd, [by_node[m.metadata.dst_node_id].handle(m) for m in evaluate])
    return arrays


def _guard(reporter: Any, job_id: str = "job-1") -> GuardedStrategy:
    inner = build_strategy("fedavg", min_available_nodes=2, min_train_nodes=2, min_evaluate_nodes=2)
    return GuardedStrategy(inner, reporter, run_id=1, job_id=job_id)


INITIAL = {"w": np.zeros((4, 3), dtype=np.float32), "b": np.zeros(3, dtype=np.float32)}


# ---------------------------------------------------------------- ServerApp guard + device mod


def test_the_guard_reports_each_accepted_update_digest_and_root(tmp_path: Path) -> None:
    reporter = ListReporter()
    guard = _guard(reporter)
    devices = [Device(n, tmp_path / str(n)) for n in (11, 12, 13)]
    sent: dict[int, bytes] = {}
    original = Device.handle

    def spy(self: Device, msg: Message) -> Message:
        reply = original(self, msg)
        if msg.metadata.message_type == "train":
            sent[self.node_id] = update_digest(reply.content.array_records)
        return reply

    Device.handle = spy  # type: ignore[method-assign]
    try:
        final = play_rounds(guard, devices, INITIAL, 1, "job-1")
    finally:
        Device.handle = original  # type: ignore[method-assign]

    train = next(r for r in reporter.rounds if r.kind == "train")
    assert train.audit is not None
    assert {leaf["node_id"]: leaf["digest"] for leaf in train.audit["leaves"]} == {
        n: d.hex() for n, d in sent.items()
    }
    assert train.audit["root"] == MerkleTree(sent.values()).root.hex() and train.audit["count"] == 3
    assert train.audit["aggregate"] == update_digest({"arrays": final}).hex()


def test_each_participant_gets_its_own_proof_and_a_non_participant_an_empty_leaf(tmp_path: Path) -> None:
    guard = _guard(ListReporter())
    devices = [Device(n, tmp_path / str(n)) for n in (1, 2, 3)]
    seen: list[Message] = []

    def capture(messages: list[Message]) -> None:
        seen.extend(messages)

    # node 3's train reply is malformed (a NaN): rejected, so it is not in the tree
    original = Device.train

    def nan_for_3(self: Device, msg: Message, ctx: Context) -> Message:
        reply = original(self, msg, ctx)
        if self.node_id == 3:
            arrays = reply.content.array_records["arrays"]
            arrays["b"] = Array(np.full(3, np.nan, dtype=np.float32))
        return reply

    Device.train = nan_for_3  # type: ignore[method-assign]
    try:
        play_rounds(guard, devices, INITIAL, 1, "job-1", before_evaluate=capture)
    finally:
        Device.train = original  # type: ignore[method-assign]

    configs = {m.metadata.dst_node_id: m.content.config_records[CONFIG] for m in seen}
    assert len({id(m.content) for m in seen}) == 3  # each message its own copy of the config
    root = bytes.fromhex(str(configs[1][AuditKey.ROOT]))
    for node in (1, 2):
        cfg = configs[node]
        proof = [bytes.fromhex(h) for h in cfg[AuditKey.PROOF]]  # type: ignore[union-attr]
        leaf = bytes.fromhex(str(cfg[AuditKey.LEAF]))
        assert verify_proof(leaf, int(cfg[AuditKey.INDEX]), int(cfg[AuditKey.COUNT]), proof, root)  # type: ignore[arg-type]
    assert configs[3][AuditKey.LEAF] == "" and configs[3][AuditKey.INDEX] == -1
    assert configs[1][AuditKey.COUNT] == 2


def test_the_device_verifies_its_inclusion_and_keeps_a_receipt(tmp_path: Path) -> None:
    reporter = ListReporter()  # no controller: the chain confirmation is not required
    devices = [Device(n, tmp_path / str(n)) for n in (1, 2)]
    play_rounds(_guard(reporter), devices, INITIAL, 2, "job-r")
    evaluate = [r for r in reporter.rounds if r.kind == "evaluate"]
    assert all(r.failures == 0 and r.audit is None and r.participants == 2 for r in evaluate)
    lines = (tmp_path / "1" / AUDIT_DIR / "job-r.jsonl").read_text().splitlines()
    receipts = [json.loads(line) for line in lines]
    assert [r["round"] for r in receipts] == ["1", "2"]
    assert all(r["verified"] and r["included"] for r in receipts)
    first = receipts[0]
    proof = [bytes.fromhex(h) for h in first["proof"]]
    assert verify_proof(bytes.fromhex(first["leaf"]), first["index"], first["count"], proof,
                        bytes.fromhex(first["root"]))  # fmt: skip


def test_a_tampered_proof_is_refused_by_the_device_and_reported_as_a_dispute(tmp_path: Path) -> None:
    reporter = ListReporter()
    devices = [Device(n, tmp_path / str(n)) for n in (1, 2, 3)]

    def tamper_node_2(messages: list[Message]) -> None:
        for m in messages:
            if m.metadata.dst_node_id == 2:
                cfg = m.content.config_records[CONFIG]
                proof = list(cfg[AuditKey.PROOF])  # type: ignore[arg-type]
                proof[0] = "00" * 32
                cfg[AuditKey.PROOF] = proof

    play_rounds(_guard(reporter), devices, INITIAL, 1, "job-t", before_evaluate=tamper_node_2)

    evaluate = next(r for r in reporter.rounds if r.kind == "evaluate")
    assert evaluate.audit is not None
    (dispute,) = evaluate.audit["refused"]
    assert dispute["node_id"] == 2 and "inclusion proof" in dispute["reason"]
    # the device leaves the job: its next train message is refused the same way
    cfg = ConfigRecord({TrainKey.SERVER_ROUND: 2, TrainKey.JOB_ID: "job-t"})
    msg = Message(RecordDict({"config": cfg}), dst_node_id=2, message_type="train")
    reply = audit_mod(msg, devices[1].context, devices[1].train)
    assert reply.has_error() and reply.error.code == AUDIT_FAILED_CODE


def test_the_device_refuses_a_round_whose_root_the_controller_did_not_confirm(tmp_path: Path) -> None:
    reporter = ListReporter()
    guard = _guard(reporter)
    guard.auditor.chain_required = True  # a deployment ServerApp whose controller did not answer
    devices = [Device(n, tmp_path / str(n)) for n in (1, 2)]
    play_rounds(guard, devices, INITIAL, 1, "job-u")
    evaluate = next(r for r in reporter.rounds if r.kind == "evaluate")
    assert evaluate.audit is not None and len(evaluate.audit["refused"]) == 2
    assert all("did not confirm" in d["reason"] for d in evaluate.audit["refused"])


def test_a_device_whose_update_was_altered_before_aggregation_disputes_the_round(tmp_path: Path) -> None:
    reporter = ListReporter()
    devices = [Device(1, tmp_path / "1"), Device(2, tmp_path / "2", tamper_train_reply=True)]
    play_rounds(_guard(reporter), devices, INITIAL, 1, "job-a")
    evaluate = next(r for r in reporter.rounds if r.kind == "evaluate")
    assert evaluate.audit is not None
    (dispute,) = evaluate.audit["refused"]
    assert dispute["node_id"] == 2 and "is not this device's update" in dispute["reason"]


# ---------------------------------------------------------------- the controller: chain, route, CLI


class AuditedEngine(ScriptedEngine):
    """Runs the real ServerApp guard with an HttpReporter to the live controller, over in-process devices."""

    def __init__(self, state_root: Path) -> None:
        super().__init__()
        self.state_root = state_root
        self.tamper: Callable[[list[Message]], None] | None = None

    def run(
        self, spec: FederationSpec, cancel: threading.Event, on_round: ReportCallback
    ) -> FederationOutcome:
        from edge_agent.learning.models import build_model

        self.specs.append(spec)
        reporter = HttpReporter(spec.report_url, token=spec.report_token)
        try:
            guard = _guard(reporter, spec.job_id)
            devices = [Device(int(n), self.state_root / str(n)) for n in spec.participant_nodes]
            initial = {k: v.numpy() for k, v in build_model(spec.network, spec.seed).state_dict().items()}
            final = play_rounds(
                guard, devices, initial, spec.rounds, spec.job_id, before_evaluate=self.tamper
            )
            save_arrays(final, spec.output_path)
            reporter.on_finish(_summary(spec))  # type: ignore[arg-type]
        finally:
            reporter.close()
        summary = {"type": "finished", "final_metrics": {}, "seconds": 1.0}
        return FederationOutcome(JobState.SUCCEEDED, None, "1", spec.output_path, summary)


def _summary(spec: FederationSpec) -> Any:
    from controller.federation.serverapp import RunSummary

    return RunSummary(run_id=1, job_id=spec.job_id, rounds=spec.rounds, seconds=1.0,
                      output_path=str(spec.output_path), final_metrics={})  # fmt: skip


def check_job_audit(live: LiveServer, job_id: str, state_dirs: dict[str, Path]) -> FlAuditOut:
    """A finished job's audit verifies, each device's receipts say it verified every round it was in, and
    ``fedge fl audit`` exits 0 (shared with test_flower_e2e.py, which runs real SuperNodes)."""
    with httpx.Client(base_url=live.url, headers=ADMIN, timeout=30) as http:
        r = http.get(f"/v1/fl/jobs/{job_id}/audit")
        assert r.status_code == 200, r.text
    doc = FlAuditOut.model_validate(r.json())
    assert doc.rounds and all(rnd.chain is not None and not rnd.disputes for rnd in doc.rounds)
    verify_audit(doc)
    for device_id, state_dir in state_dirs.items():
        receipts = [
            json.loads(line) for line in (state_dir / AUDIT_DIR / f"{job_id}.jsonl").read_text().splitlines()
        ]
        assert receipts and all(r["verified"] for r in receipts), receipts
        included = {int(r["round"]) for r in receipts if r.get("included")}
        in_tree = {rnd.round for rnd in doc.rounds if any(leaf.device_id == device_id for leaf in rnd.leaves)}
        assert included == in_tree, (device_id, included, in_tree)
        assert {r["chain_tx"] for r in receipts if r.get("included")} <= {rnd.tx_hash for rnd in doc.rounds}
    out = fedge_cli(live, "fl", "audit", job_id)
    assert out.returncode == 0, out.stderr
    assert f"audit verified ({len(doc.rounds)} rounds on chain)" in out.stderr
    return doc


@dataclass
class Ctl:
    state: ControllerState
    live: LiveServer
    engine: AuditedEngine
    model_id: str
    devices: list[str]

    def run(self) -> dict[str, Any]:
        with httpx.Client(base_url=self.live.url, headers=ADMIN, timeout=30) as http:
            r = http.post("/v1/fl/jobs", json=job_body(self.model_id, self.devices, rounds=2))
            assert r.status_code == 202, r.text
            job_id = r.json()["job_id"]
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                job: dict[str, Any] = http.get(f"/v1/fl/jobs/{job_id}").json()
                if job["status"] in ("succeeded", "failed", "cancelled"):
                    return job
                time.sleep(0.2)
        raise AssertionError(f"job {job_id} did not end")

    def audit(self, job_id: str) -> FlAuditOut:
        with httpx.Client(base_url=self.live.url, headers=ADMIN, timeout=30) as http:
            r = http.get(f"/v1/fl/jobs/{job_id}/audit")
            assert r.status_code == 200, r.text
            return FlAuditOut.model_validate(r.json())


@pytest.fixture
def ctl(tmp_path: Path, shared_evm: ChainBackend) -> Iterator[Ctl]:
    settings = ControllerSettings(data_dir=tmp_path / "data", admin_token=ADMIN_TOKEN, _env_file=None)
    engine = AuditedEngine(tmp_path / "devices")
    state = build_state(settings, shared_evm, start_jobs=False)
    state.federation._engine_factory = lambda: engine
    with LiveServer(state) as live:
        state.settings.fl_report_url = live.url  # the ServerApp reports to this live controller
        state.federation.start()
        with httpx.Client(base_url=live.url, timeout=30) as http:
            _, model_id = register_digits_model(http)
        devices = [enroll_direct(state), enroll_direct(state), enroll_direct(state)]
        yield Ctl(state, live, engine, model_id, devices)
    state.close()


def test_every_round_is_on_chain_and_the_audit_verifies(ctl: Ctl) -> None:
    job = ctl.run()
    assert job["status"] == "succeeded", job["error"]
    doc = ctl.audit(job["job_id"])
    assert [r.round for r in doc.rounds] == [1, 2]
    for rnd in doc.rounds:
        record = ctl.state.chain.get_fl_round(job["job_id"], rnd.round)
        assert (
            record.updates_root.hex() == rnd.updates_root == (rnd.chain.updates_root if rnd.chain else None)
        )
        assert record.update_count == 3 and len(rnd.leaves) == 3 and rnd.tx_hash and rnd.disputes == []
        assert {leaf.device_id for leaf in rnd.leaves} == set(ctl.devices)
    assert doc.final is not None and doc.final.lineage_applicable
    assert doc.final.aggregate_hash == doc.rounds[-1].aggregate_hash
    assert doc.final.sha256 == doc.final.chain_final_model_hash == job["result"]["sha256"]
    assert len(verify_audit(doc)) == 3
    # each device checked its proof against the root read back from the chain
    for node in ctl.engine.registered.values():
        receipts = (ctl.engine.state_root / str(node) / AUDIT_DIR / f"{job['job_id']}.jsonl").read_text()
        rows = [json.loads(line) for line in receipts.splitlines()]
        assert [r["verified"] for r in rows] == [True, True]
        assert [r["chain_tx"] for r in rows] == [r.tx_hash for r in doc.rounds]
    nodes = {device: node for device, node in ctl.engine.registered.items()}
    check_job_audit(ctl.live, job["job_id"], {d: ctl.engine.state_root / str(n) for d, n in nodes.items()})


def test_a_tampered_stored_update_digest_is_detected_by_the_audit(ctl: Ctl) -> None:
    job = ctl.run()
    assert job["status"] == "succeeded", job["error"]
    with ctl.state.sessions.begin() as s:
        row = s.query(FlAuditRound).filter_by(job_id=job["job_id"], round=2).one()
        leaves = [dict(leaf) for leaf in row.leaves]
        leaves[1]["digest"] = "ab" * 32  # claim another update was used
        row.leaves = leaves
    doc = ctl.audit(job["job_id"])
    with pytest.raises(AuditMismatch, match=r"round 2: .*(hash to root|sorted order)"):
        verify_audit(doc)
    out = fedge_cli(ctl.live, "fl", "audit", job["job_id"])
    assert out.returncode == 1
    assert "audit FAILED: round 2" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_a_swapped_stored_aggregate_is_detected_by_the_audit(ctl: Ctl) -> None:
    job = ctl.run()
    with ctl.state.sessions.begin() as s:
        row = s.query(FlAuditRound).filter_by(job_id=job["job_id"], round=1).one()
        row.aggregate_hash = "cd" * 32
    with pytest.raises(AuditMismatch, match="round 1: aggregate"):
        verify_audit(ctl.audit(job["job_id"]))


def test_a_device_dispute_fails_the_audit(ctl: Ctl) -> None:
    def tamper_one(messages: list[Message]) -> None:
        cfg = messages[0].content.config_records[CONFIG]
        if int(cfg[AuditKey.ROUND]) == 1:  # type: ignore[arg-type]
            cfg[AuditKey.CHAIN_ROOT] = "ef" * 32

    ctl.engine.tamper = tamper_one
    job = ctl.run()
    doc = ctl.audit(job["job_id"])
    (dispute,) = doc.rounds[0].disputes
    assert "is not the on-chain root" in dispute.reason and dispute.device_id in ctl.devices
    with pytest.raises(AuditMismatch, match=r"round 1: device .* disputes its inclusion"):
        verify_audit(doc)


def test_a_second_report_of_a_recorded_round_with_another_root_is_refused(ctl: Ctl) -> None:
    job = ctl.run()
    row = ctl.audit(job["job_id"]).rounds[0]
    with pytest.raises(Exception, match="already recorded") as info:
        ctl.state.federation.audit.record_round(
            job["job_id"], 1, {"root": MerkleTree([b"\x01" * 32]).root.hex(), "aggregate": "aa" * 32,
                               "leaves": [{"node_id": row.leaves[0].node_id, "digest": "01" * 32}]},
        )  # fmt: skip
    assert getattr(info.value, "status", None) == 422
    assert ctl.state.chain.get_fl_round(job["job_id"], 1).updates_root.hex() == row.updates_root


def test_the_audit_of_an_unknown_job_is_404_and_the_route_is_in_the_openapi(ctl: Ctl) -> None:
    with httpx.Client(base_url=ctl.live.url, headers=ADMIN, timeout=30) as http:
        r = http.get("/v1/fl/jobs/no-such-job/audit")
        assert r.status_code == 404 and r.headers["content-type"].startswith("application/problem+json")
        spec = http.get("/openapi.json").json()
    assert "/v1/fl/jobs/{job_id}/audit" in spec["paths"]
    assert "FlAuditOut" in json.dumps(
        spec["paths"]["/v1/fl/jobs/{job_id}/audit"]
    ) or "FlAuditOut" in json.dumps(spec.get("components", {}))


def test_bad_audit_reports_are_refused_with_the_field_named(ctl: Ctl) -> None:
    job = ctl.run()
    audit = ctl.state.federation.audit
    node = ctl.audit(job["job_id"]).rounds[0].leaves[0].node_id
    digest = "11" * 32
    root = MerkleTree([bytes.fromhex(digest)]).root.hex()
    cases = [
        ({"root": "00" * 32, "aggregate": "aa" * 32, "leaves": [{"node_id": node, "digest": digest}]}, "audit.root"),
        ({"root": root, "aggregate": "AA", "leaves": [{"node_id": node, "digest": digest}]}, "audit.aggregate"),
        ({"root": root, "aggregate": "aa" * 32, "leaves": [{"node_id": node, "digest": "xyz"}]}, "audit.leaves[0].digest"),
        ({"root": root, "aggregate": "aa" * 32, "leaves": []}, "audit.leaves"),
        ({"root": root, "aggregate": "aa" * 32, "leaves": [{"node_id": "999", "digest": digest}]}, "audit"),
    ]  # fmt: skip
    for report, field_name in cases:
        with pytest.raises(Exception) as info:
            audit.record_round(job["job_id"], 7, report)
        assert getattr(info.value, "status", None) == 422, report
        assert info.value.extra.get("field") == field_name, (report, info.value)  # type: ignore[attr-defined]
    with pytest.raises(Exception, match="not recorded"):
        ctl.state.chain.get_fl_round(job["job_id"], 7)  # nothing half-written


def test_a_round_on_chain_whose_row_was_lost_is_adopted(ctl: Ctl) -> None:
    job = ctl.run()
    node = ctl.audit(job["job_id"]).rounds[0].leaves[0].node_id
    digest = bytes.fromhex("22" * 32)
    root = MerkleTree([digest]).root
    ctl.state.chain.record_fl_round(job["job_id"], 5, root, b"\x33" * 32, 1)  # then the controller crashed
    ctl.state.federation.audit.record_round(
        job["job_id"],
        5,
        {"root": root.hex(), "aggregate": "33" * 32, "leaves": [{"node_id": node, "digest": digest.hex()}]},
    )
    (adopted,) = [r for r in ctl.audit(job["job_id"]).rounds if r.round == 5]
    assert adopted.updates_root == root.hex() and adopted.chain is not None and adopted.tx_hash is None


# ---------------------------------------------------------------- the verifier alone


def _doc(digests: list[bytes], **changes: Any) -> FlAuditOut:
    from controller.schemas.fl_audit import FlAuditChainRecord, FlAuditLeaf, FlAuditRoundOut

    tree = MerkleTree(digests)
    leaves = [FlAuditLeaf(index=i, digest=d.hex(), node_id=str(i), device_id=f"dev-{i}",
                          proof=[h.hex() for h in tree.proof(i)]) for i, d in enumerate(tree.leaves)]  # fmt: skip
    chain = FlAuditChainRecord(updates_root=tree.root.hex(), aggregate_hash="ab" * 32, update_count=tree.count,
                               recorded_at=1, recorded_block=2)  # fmt: skip
    rnd = FlAuditRoundOut(round=1, updates_root=tree.root.hex(), aggregate_hash="ab" * 32, update_count=tree.count,
                          tx_hash="0x01", block_number=2, leaves=leaves, chain=chain)  # fmt: skip
    doc = FlAuditOut(
        job_id="j", status="running", registry_address="0x0", chain_id=1, rounds=[rnd], final=None
    )
    return doc.model_copy(update=changes)


def test_the_verifier_accepts_a_consistent_document_and_names_each_inconsistency() -> None:
    digests = [hashlib.sha256(bytes([i])).digest() for i in range(5)]
    assert verify_audit(_doc(digests))[0].startswith("round 1: 5 updates")
    doc = _doc(digests)
    doc.rounds[0].leaves[2].proof[0] = "00" * 32
    with pytest.raises(AuditMismatch, match="proof of leaf 2"):
        verify_audit(doc)
    doc = _doc(digests)
    doc.rounds[0].leaves[1].index = 3
    with pytest.raises(AuditMismatch, match="indexes"):
        verify_audit(doc)
    doc = _doc(digests)
    doc.rounds[0].chain = None
    doc.rounds[0].chain_error = "round 1 of federated-learning run 'j' is not recorded"
    with pytest.raises(AuditMismatch, match="no on-chain record"):
        verify_audit(doc)
    doc = _doc(digests)
    del doc.rounds[0].leaves[4]
    with pytest.raises(AuditMismatch, match="hash to root"):
        verify_audit(doc)
    with pytest.raises(AuditMismatch, match="not audited per round: SecAgg"):
        verify_audit(_doc(digests, rounds=[], not_audited="SecAgg+: no individual update"))
    with pytest.raises(AuditMismatch, match="succeeded but no round"):
        verify_audit(_doc(digests, rounds=[], status="succeeded"))
