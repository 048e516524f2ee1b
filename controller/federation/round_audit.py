"""Every FL round on chain, in the ServerApp: digest the accepted updates, hand out inclusion proofs.

:class:`RoundAuditor` is kept by :class:`~controller.federation.serverapp.GuardedStrategy`:

* after a train round it digests each accepted reply (:func:`fedge_protocol.merkle.update_digest` over
  the reply's ArrayRecords, as they arrived: ciphertexts when HE is on) and the aggregate, builds the
  round's Merkle tree and returns the report's ``audit`` field (the controller records the root on chain
  and answers with the root as read back, :meth:`confirm`);
* it adds to each participant's evaluate config its leaf, index, proof, the root, the aggregate digest and
  the on-chain root and transaction (:class:`fedge_protocol.merkle.AuditKey`), which the device checks;
* under SecAgg+ it is turned off (``enabled``): no individual update reaches the server;
* it picks out evaluate replies that are a device's audit refusal (:data:`AUDIT_FAILED_CODE`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from fedge_protocol.federation import ARRAYS, CONFIG
from fedge_protocol.merkle import AUDIT_FAILED_CODE, AUDIT_FAILED_REASON, AuditKey, MerkleTree, update_digest

__all__ = ["RoundAuditor", "is_audit_refusal", "params_digest"]

log = logging.getLogger("fedge.controller.federation")


def params_digest(params: Mapping[str, Any]) -> bytes:
    """The update digest of parameters (name -> ndarray) as one ``arrays`` ArrayRecord: what the round's
    aggregate digest is when these are its parameters (the final model's lineage check)."""
    return update_digest({ARRAYS: ArrayRecord({name: Array(value) for name, value in params.items()})})


def is_audit_refusal(msg: Message) -> bool:
    """An evaluate reply saying the device's check of its inclusion proof failed."""
    return (
        msg.has_error()
        and msg.error.code == AUDIT_FAILED_CODE
        and (msg.error.reason or "").startswith(AUDIT_FAILED_REASON)
    )


class RoundAuditor:
    """The audit state of one run: the last train round's tree and the controller's confirmation."""

    def __init__(self, *, chain_required: bool) -> None:
        self.chain_required = chain_required
        #: False under SecAgg+: the server never holds an individual update, so there is nothing to digest
        self.enabled = True
        self._round = 0
        self._tree: MerkleTree | None = None
        self._by_node: dict[int, bytes] = {}
        self._aggregate = b""
        self._confirmed: dict[str, Any] = {}

    @staticmethod
    def digests(valid: Iterable[Message]) -> dict[int, bytes]:
        """Each accepted reply's update digest by node id (taken before the strategy sees the replies)."""
        return {int(m.metadata.src_node_id): update_digest(m.content.array_records) for m in valid}

    def on_train(
        self, server_round: int, digests: Mapping[int, bytes], aggregate: ArrayRecord | None
    ) -> dict[str, Any] | None:
        """The ``audit`` of a train round's report (None when nothing was aggregated)."""
        self._round, self._tree, self._by_node, self._confirmed = server_round, None, {}, {}
        if not self.enabled or aggregate is None or not digests:
            return None
        self._by_node = dict(digests)
        self._tree = MerkleTree(self._by_node.values())
        self._aggregate = update_digest({ARRAYS: aggregate})
        return {
            "round": server_round,
            "root": self._tree.root.hex(),
            "aggregate": self._aggregate.hex(),
            "count": self._tree.count,
            "leaves": [{"node_id": n, "digest": d.hex()} for n, d in sorted(self._by_node.items())],
        }

    def confirm(self, reply: Mapping[str, Any] | None) -> None:
        """The controller's answer to the train report: ``{"audit": {"chain_root", "tx_hash", ...}}``."""
        audit = (reply or {}).get("audit") if isinstance(reply, Mapping) else None
        if isinstance(audit, Mapping) and audit.get("round") == self._round:
            self._confirmed = dict(audit)
        elif self._tree is not None and self.chain_required:
            log.error("round %d: the controller did not confirm the audit root on chain", self._round)

    def evaluate_messages(self, server_round: int, messages: Iterable[Message]) -> list[Message]:
        """Each evaluate message with the node's audit keys added to its own copy of the config."""
        out = list(messages)
        tree = self._tree
        if tree is None or server_round != self._round:
            return out
        for msg in out:
            node = int(msg.metadata.dst_node_id)
            digest = self._by_node.get(node)
            index = tree.index_of(digest) if digest is not None else None
            content = msg.content
            config = dict(content.config_records[CONFIG]) if CONFIG in content.config_records else {}
            config.update(
                {
                    AuditKey.ROUND: server_round,
                    AuditKey.ROOT: tree.root.hex(),
                    AuditKey.COUNT: tree.count,
                    AuditKey.AGGREGATE: self._aggregate.hex(),
                    AuditKey.LEAF: digest.hex() if digest is not None else "",
                    AuditKey.INDEX: index if index is not None else -1,
                    AuditKey.PROOF: [h.hex() for h in tree.proof(index)] if index is not None else [],
                    AuditKey.CHAIN_REQUIRED: self.chain_required,
                    AuditKey.CHAIN_ROOT: str(self._confirmed.get("chain_root") or ""),
                    AuditKey.CHAIN_TX: str(self._confirmed.get("tx_hash") or ""),
                }
            )
            copy = RecordDict({key: record for key, record in content.items() if key != CONFIG})
            copy[CONFIG] = ConfigRecord(config)
            msg.content = copy  # the strategy shares one RecordDict between messages: each gets its own
        return out
