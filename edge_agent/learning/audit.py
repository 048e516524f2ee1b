"""The device's side of the FL audit: prove its update went into the round that was recorded on chain.

:func:`audit_mod` is a Flower ClientApp mod (``make_client_app(mods=[round_lock_mod, audit_mod, ...])``;
it must wrap every mod that changes a reply's arrays, e.g. encryption, so it digests what is really sent):

* **train**: after the handler, the reply's update digest
  (:func:`fedge_protocol.merkle.update_digest`, the same bytes the ServerApp digests) is kept in the run's
  ``context.state`` under the round number;
* **evaluate** of the round just aggregated: the config carries the round's audit
  (:class:`fedge_protocol.merkle.AuditKey`). The device checks that the server's leaf for it is its own
  digest, that the inclusion proof leads from that leaf to the root, that the root is the one the
  controller read back from the chain (with its transaction), and that the model it is asked to evaluate
  is the aggregate whose digest is recorded. Not being in the tree is legitimate (a straggler, a rejected
  reply) and is logged; a leaf that is not its digest, a proof that fails, an unconfirmed root or a
  different aggregate is an **audit failure**: logged, replied as an ``Error``
  (:data:`~fedge_protocol.merkle.AUDIT_FAILED_CODE`, reason starting with
  :data:`~fedge_protocol.merkle.AUDIT_FAILED_REASON`, which the ServerApp reports to the controller as a
  dispute) and every later message of the run is refused the same way: the device leaves the job.

With ``fedge-state-dir`` in the node config each check also appends a receipt (round, leaf, index, count,
proof, root, transaction, verdict) to ``<state dir>/fl-audit/<job>.jsonl``: with it and read access to the
chain, the device can later prove its update was, or was not, in a recorded round.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context, Error, Message

from fedge_protocol.federation import ARRAYS, CONFIG, NodeKey, TrainKey
from fedge_protocol.merkle import (
    AUDIT_FAILED_CODE,
    AUDIT_FAILED_REASON,
    AuditKey,
    root_from_proof,
    update_digest,
)

__all__ = ["AUDIT_DIR", "STATE_KEY", "AuditCheckFailed", "audit_mod", "check_round"]

log = logging.getLogger("fedge.agent.learning.audit")

STATE_KEY = "fedge-audit"  # context.state ConfigRecord: "<round>" -> own digest hex, "failed" -> reason
FAILED = "failed"
AUDIT_DIR = "fl-audit"


class AuditCheckFailed(Exception):
    """The round's audit does not hold for this device (the message says what)."""


def _kind(msg: Message) -> str:
    return str(msg.metadata.message_type).split(".", 1)[0]


def _label(value: object) -> str:
    """A config value (the round number) as text."""
    return value.hex() if isinstance(value, bytes) else str(value)


def _state(context: Context) -> ConfigRecord:
    if STATE_KEY not in context.state.config_records:
        context.state[STATE_KEY] = ConfigRecord()
    return context.state.config_records[STATE_KEY]


def _hex(value: object, what: str) -> bytes:
    if not isinstance(value, str) or len(value) != 64:
        raise AuditCheckFailed(f"{what} is not a SHA-256 hex digest")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise AuditCheckFailed(f"{what} is not a SHA-256 hex digest") from None


def check_round(config: ConfigRecord, own: bytes | None, evaluated: bytes | None) -> dict[str, Any]:
    """Check one round's audit keys against the device's own update digest (None: it sent none that
    round) and the digest of the model it received; the receipt, or AuditCheckFailed."""
    round_ = _label(config.get(AuditKey.ROUND))
    root = _hex(config.get(AuditKey.ROOT), "the audit root")
    leaf = str(config.get(AuditKey.LEAF) or "")
    receipt: dict[str, Any] = {
        "round": round_,
        "root": root.hex(),
        "count": config.get(AuditKey.COUNT),
        "chain_tx": str(config.get(AuditKey.CHAIN_TX) or ""),
        "aggregate": str(config.get(AuditKey.AGGREGATE) or ""),
    }
    if bool(config.get(AuditKey.CHAIN_REQUIRED, True)):
        chain_root = str(config.get(AuditKey.CHAIN_ROOT) or "")
        if not chain_root or not receipt["chain_tx"]:
            raise AuditCheckFailed(
                f"round {round_}: the controller did not confirm root {root.hex()} on chain"
            )
        if chain_root != root.hex():
            raise AuditCheckFailed(
                f"round {round_}: the root sent {root.hex()} is not the on-chain root {chain_root}"
            )
    aggregate = _hex(receipt["aggregate"], "the aggregate digest")
    if evaluated is not None and evaluated != aggregate:
        raise AuditCheckFailed(
            f"round {round_}: the model to evaluate has digest {evaluated.hex()}, the recorded aggregate "
            f"is {aggregate.hex()}"
        )
    if own is None:
        if leaf:
            raise AuditCheckFailed(
                f"round {round_}: the server lists an update {leaf} this device never sent"
            )
        return {**receipt, "included": False}
    if not leaf:
        log.warning("round %s: this device's update %s was not used (not in the tree)", round_, own.hex())
        return {**receipt, "included": False, "leaf": own.hex()}
    if _hex(leaf, "the leaf") != own:
        raise AuditCheckFailed(
            f"round {round_}: the server's leaf {leaf} is not this device's update {own.hex()}"
        )
    index, count = config.get(AuditKey.INDEX), config.get(AuditKey.COUNT)
    proof_hex = config.get(AuditKey.PROOF) or []
    if not isinstance(index, int) or not isinstance(count, int) or not isinstance(proof_hex, list):
        raise AuditCheckFailed(f"round {round_}: malformed inclusion proof")
    proof = [_hex(h, "a proof hash") for h in proof_hex]
    got = root_from_proof(own, index, count, proof)
    if got != root:
        raise AuditCheckFailed(
            f"round {round_}: the inclusion proof of leaf {index}/{count} leads to "
            f"{got.hex() if got else 'nothing'}, not to root {root.hex()}"
        )
    return {**receipt, "included": True, "leaf": own.hex(), "index": index, "proof": proof_hex}


def _write_receipt(context: Context, job: str, receipt: dict[str, Any]) -> None:
    state_dir = context.node_config.get(NodeKey.STATE_DIR)
    if not state_dir:
        return
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", job) or "job"
    path = Path(str(state_dir)) / AUDIT_DIR / f"{safe}.jsonl"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps({"job_id": job, "at": time.time(), **receipt}, sort_keys=True) + "\n")
    except OSError as exc:
        log.warning("could not write the audit receipt %s: %s", path, exc)


def _refusal(msg: Message, reason: str) -> Message:
    return Message(Error(AUDIT_FAILED_CODE, f"{AUDIT_FAILED_REASON}: {reason}"), reply_to=msg)


def audit_mod(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
    """A Flower ClientApp mod: digest train replies, check each round's inclusion proof (module docstring)."""
    kind = _kind(msg)
    if kind not in ("train", "evaluate"):
        return call_next(msg, context)
    state = _state(context)
    if FAILED in state:
        return _refusal(msg, f"an earlier check failed, this device left the job: {_label(state[FAILED])}")
    config = msg.content.config_records.get(CONFIG, ConfigRecord())
    if kind == "evaluate" and AuditKey.ROOT in config:
        round_ = _label(config.get(AuditKey.ROUND))
        own_hex = state.get(round_)
        job = str(config.get(TrainKey.JOB_ID) or f"flwr-run-{context.run_id}")
        records = msg.content.array_records
        evaluated = update_digest({ARRAYS: records[ARRAYS]}) if ARRAYS in records else None
        try:
            receipt = check_round(config, bytes.fromhex(str(own_hex)) if own_hex else None, evaluated)
        except AuditCheckFailed as exc:
            log.error("FL job %s: audit check failed: %s", job, exc)
            state[FAILED] = str(exc)
            _write_receipt(context, job, {"round": round_, "verified": False, "reason": str(exc)})
            return _refusal(msg, str(exc))
        _write_receipt(context, job, {**receipt, "verified": True})
        log.info("FL job %s round %s: audit verified (included: %s)", job, round_, receipt["included"])
    reply = call_next(msg, context)
    if kind == "train" and not reply.has_error() and reply.content.array_records:
        state[_label(config.get(TrainKey.SERVER_ROUND))] = update_digest(reply.content.array_records).hex()
    return reply
