"""HE aggregation on the controller: the key setup it relays and FedAvg on ciphertexts, with a public
context only (the controller never holds a secret key, Galois keys or relinearisation keys).

Run config ``he`` (JSON; "" is off): ``{"poly_modulus_degree": 4096, "scale_bits": 34, "masking": false}``.

:meth:`HeAggregation.setup`, before round 1 (query messages, :class:`fedge_protocol.he.HeAction`):

1. ``he_hello`` to every participant node: each replies with its device public key (PEM);
2. ``he_keygen`` to the key holder (the lowest node id that answered) with the others' node ids and keys:
   it makes the CKKS key set, seals the secret context to each of them and replies with the **public**
   context and the sealed blobs; :func:`fedge_common.he.load_public_context` refuses anything else;
3. ``he_key`` to every other node with its blob and the holder's public key; a node that cannot open it
   (or whose opened key set does not match the public context's SHA-256) is left out of the job.

:class:`HeFedAvg` then runs FedAvg with Flower's round loop: round 1 sends the plaintext initial model,
later rounds the encrypted aggregate; a train reply is ``num-examples x parameters`` (+ masks) as CKKS
chunks; the aggregate is the chunk-wise sum plus the plain total weight, which each device divides by
after decrypting. With ``masking`` a round aggregates only when every node asked replied (the masks
cancel only in the full sum): otherwise the round keeps the previous model and the next round starts
over with the nodes that are there (the dropout rule). :meth:`HeAggregation.final_model` asks the key
holder to decrypt the final aggregate: the job's output is the only plaintext model the controller sees.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedge_common import he
from fedge_common.sealing import SealError, public_key_from_pem
from fedge_protocol.federation import ARRAYS, CONFIG, ReplyKey
from fedge_protocol.he import CHUNK_PREFIX, WEIGHT_ARRAY, HeAction, HeKey, chunk_name

__all__ = ["HeAggregation", "HeFedAvg", "HeSetupError", "HeSpec", "parse_he"]

log = logging.getLogger("fedge.controller.federation")


class HeSetupError(RuntimeError):
    """The key setup could not give enough participants the job's key set."""


@dataclass(frozen=True)
class HeSpec:
    params: he.HeParams
    masking: bool = False


def parse_he(text: str) -> HeSpec | None:
    """The run config's ``he`` value: "" -> None (off); a bad value raises ``ValueError``."""
    if not text:
        return None
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"run config 'he' is not JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise ValueError("run config 'he' must be a JSON object")
    unknown = sorted(set(raw) - {"poly_modulus_degree", "scale_bits", "masking"})
    if unknown:
        raise ValueError(f"run config 'he': unknown keys {unknown}")
    defaults = he.HeParams()
    try:
        params = he.HeParams(
            int(raw.get("poly_modulus_degree", defaults.poly_modulus_degree)),
            int(raw.get("scale_bits", defaults.scale_bits)),
        )
    except (TypeError, he.HeError) as exc:
        raise ValueError(f"run config 'he': {exc}") from exc
    return HeSpec(params, bool(raw.get("masking", False)))


def _query(node: int, action: str, values: dict[str, Any], arrays: ArrayRecord | None = None) -> Message:
    content = RecordDict({CONFIG: ConfigRecord(values)})
    if arrays is not None:
        content[ARRAYS] = arrays
    return Message(content, dst_node_id=node, message_type=action)


def _answers(replies: Iterable[Message], step: str) -> dict[int, Message]:
    out = {}
    for msg in replies:
        node = int(msg.metadata.src_node_id)
        if msg.has_error():
            log.warning("HE %s: node %d failed: %s", step, node, msg.error.reason)
        elif CONFIG not in msg.content.config_records and ARRAYS not in msg.content.array_records:
            log.warning("HE %s: node %d replied without a record", step, node)
        else:
            out[node] = msg
    return out


def _chunks(record: ArrayRecord) -> list[bytes]:
    names = sorted(n for n in record if n.startswith(CHUNK_PREFIX))
    return [record[n].numpy().tobytes() for n in names]


def _weight(msg: Message) -> float:
    value = next(iter(msg.content.metric_records.values()))[ReplyKey.NUM_EXAMPLES]
    assert isinstance(value, int | float)
    return float(value)


def _chunk_record(chunks: list[bytes], weight: float) -> ArrayRecord:
    arrays = {chunk_name(i): Array(np.frombuffer(c, dtype=np.uint8)) for i, c in enumerate(chunks)}
    arrays[WEIGHT_ARRAY] = Array(np.asarray([weight], dtype=np.float64))
    return ArrayRecord(arrays)


@dataclass
class HeAggregation:
    """One job's key set as the controller holds it: the public context, the holder, the members."""

    job_id: str
    spec: HeSpec
    public: bytes
    fingerprint: str
    holder: int
    keys: dict[int, str]  # member node id -> public key PEM
    timeout: float = 600.0
    ctx: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.ctx is None:
            self.ctx = he.load_public_context(self.public)

    @property
    def members(self) -> list[int]:
        return sorted(self.keys)

    @classmethod
    def setup(
        cls,
        grid: Grid,
        spec: HeSpec,
        *,
        job_id: str,
        min_nodes: int,
        timeout: float,
        node_wait: float | None = None,
        cancel: threading.Event | None = None,
        cancelled: type[Exception] = HeSetupError,
    ) -> HeAggregation:
        """Relay the key setup among the connected participant nodes (see the module docstring)."""
        deadline = time.monotonic() + (timeout if node_wait is None else node_wait)
        while len(list(grid.get_node_ids())) < min_nodes:
            if cancel is not None and cancel.is_set():
                raise cancelled(f"job {job_id} was cancelled")
            if time.monotonic() > deadline:
                raise HeSetupError(f"fewer than {min_nodes} participant nodes connected for the HE key setup")
            time.sleep(0.5)
        nodes = sorted(int(n) for n in grid.get_node_ids())
        hello = _answers(
            grid.send_and_receive(
                [_query(n, HeAction.HELLO, {HeKey.JOB_ID: job_id}) for n in nodes], timeout=timeout
            ),
            "hello",
        )
        keys: dict[int, str] = {}
        for node, msg in hello.items():
            pem = msg.content.config_records[CONFIG].get(HeKey.PUBLIC_KEY)
            try:
                public_key_from_pem(str(pem))
            except SealError as exc:
                log.warning("HE hello: node %d sent no usable public key: %s", node, exc)
                continue
            keys[node] = str(pem)
        if len(keys) < min_nodes:
            raise HeSetupError(f"only {len(keys)} node(s) answered the HE hello; the job needs {min_nodes}")
        holder, others = min(keys), sorted(set(keys) - {min(keys)})
        values: dict[str, Any] = {
            HeKey.JOB_ID: job_id,
            HeKey.PARAMS: spec.params.to_json(),
            HeKey.RECIPIENTS: others,
            HeKey.RECIPIENT_KEYS: [keys[n] for n in others],
        }
        made = _answers(
            grid.send_and_receive([_query(holder, HeAction.KEYGEN, values)], timeout=timeout), "keygen"
        )
        if holder not in made:
            raise HeSetupError(f"the key holder (node {holder}) did not make the key set")
        reply = made[holder].content.config_records[CONFIG]
        public = reply.get(HeKey.PUBLIC_CONTEXT)
        sealed = reply.get(HeKey.SEALED) or []
        if not isinstance(public, bytes) or not isinstance(sealed, list) or len(sealed) != len(others):
            raise HeSetupError("the key holder's reply lacks the public context or a sealed key")
        try:
            ctx = he.load_public_context(public)  # refuses a context that holds a secret key
        except he.HeError as exc:
            raise HeSetupError(f"the key holder's context is not public-only: {exc}") from exc
        fingerprint = he.fingerprint(public)
        common = {
            HeKey.JOB_ID: job_id,
            HeKey.PARAMS: spec.params.to_json(),
            HeKey.HOLDER: holder,
            HeKey.HOLDER_KEY: keys[holder],
            HeKey.FINGERPRINT: fingerprint,
        }
        opened = _answers(
            grid.send_and_receive(
                [
                    _query(n, HeAction.KEY, {**common, HeKey.SEALED: blob})
                    for n, blob in zip(others, sealed, strict=True)
                ],
                timeout=timeout,
            ),
            "key",
        )
        members = {holder: keys[holder], **{n: keys[n] for n in others if n in opened}}
        if len(members) < min_nodes:
            raise HeSetupError(f"only {len(members)} node(s) hold the HE key set; the job needs {min_nodes}")
        log.info(
            "job %s: HE key set %s held by %d node(s) (holder %d), the controller holds its public context",
            job_id,
            fingerprint[:12],
            len(members),
            holder,
        )
        return cls(job_id, spec, public, fingerprint, holder, members, timeout, ctx)

    def strategy(self, **kwargs: Any) -> HeFedAvg:
        return HeFedAvg(self, **kwargs)

    @staticmethod
    def layout(strategy: Any) -> he.Layout | None:
        """The plaintext model's layout the strategy learnt in round 1 (None: no round ran)."""
        return strategy.layout if isinstance(strategy, HeFedAvg) else None

    def final_model(self, grid: Grid, arrays: ArrayRecord, layout: he.Layout | None) -> ArrayRecord:
        """Ask a member (the holder first) to decrypt the final aggregate; plaintext arrays unchanged."""
        if not any(n.startswith(CHUNK_PREFIX) for n in arrays) or layout is None:
            return arrays  # no round aggregated: the initial model
        values = {
            HeKey.JOB_ID: self.job_id,
            HeKey.FINGERPRINT: self.fingerprint,
            HeKey.LAYOUT: he.layout_json(layout),
        }
        for node in [self.holder, *[m for m in self.members if m != self.holder]]:
            answers = _answers(
                grid.send_and_receive([_query(node, HeAction.FINAL, values, arrays)], timeout=self.timeout),
                "final",
            )
            if node not in answers or ARRAYS not in answers[node].content.array_records:
                continue
            plain = answers[node].content.array_records[ARRAYS]
            got = [(n, tuple(a.shape), str(a.dtype)) for n, a in plain.items()]
            if got != [(n, s, d) for n, s, d in layout] or not all(
                np.all(np.isfinite(a.numpy())) for a in plain.values()
            ):
                log.warning("HE final: node %d returned parameters that do not follow the layout", node)
                continue
            return plain
        raise HeSetupError("no key holder decrypted the final model")


class HeFedAvg(FedAvg):
    """FedAvg whose updates and aggregates are CKKS ciphertexts (see the module docstring)."""

    def __init__(self, session: HeAggregation, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.session = session
        self.layout: he.Layout | None = None
        self.peers: dict[int, list[int]] = {}

    def _he_config(self) -> dict[str, Any]:
        assert self.layout is not None
        return {
            HeKey.FINGERPRINT: self.session.fingerprint,
            HeKey.LAYOUT: he.layout_json(self.layout),
            HeKey.MASKING: self.session.spec.masking,
        }

    def _members_only(self, messages: Iterable[Message]) -> list[Message]:
        kept = [m for m in messages if int(m.metadata.dst_node_id) in self.session.keys]
        for msg in kept:
            msg.content.config_records[CONFIG].update(self._he_config())
        return kept

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if self.layout is None:  # round 1: the plaintext initial model
            self.layout = [(n, tuple(a.shape), str(a.dtype)) for n, a in arrays.items()]
        messages = self._members_only(super().configure_train(server_round, arrays, config, grid))
        peers = sorted(int(m.metadata.dst_node_id) for m in messages)
        self.peers[server_round] = peers
        if self.session.spec.masking:
            for msg in messages:
                msg.content.config_records[CONFIG][HeKey.PEERS] = peers
                msg.content.config_records[CONFIG][HeKey.PEER_KEYS] = [self.session.keys[p] for p in peers]
        return messages

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self._members_only(super().configure_evaluate(server_round, arrays, config, grid))

    def check_train_arrays(self, record: ArrayRecord) -> str | None:
        """Why an encrypted train reply is malformed (None: it is well formed)."""
        assert self.layout is not None
        expected = [
            chunk_name(i) for i in range(self.session.spec.params.chunks(he.layout_size(self.layout)))
        ]
        if sorted(record) != expected:
            return f"expected the ciphertext chunks {expected[0]}..{expected[-1]}, got {len(record)} arrays"
        for name, array in record.items():
            if str(array.dtype) != "uint8" or len(array.shape) != 1:
                return f"{name}: a ciphertext chunk must be 1-D uint8"
        return None

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid = list(replies)
        if not valid:
            return None, None
        nodes = sorted(int(m.metadata.src_node_id) for m in valid)
        if self.session.spec.masking and nodes != self.peers.get(server_round):
            missing = sorted(set(self.peers.get(server_round, [])) - set(nodes))
            log.warning(
                "round %d: masked HE round without node(s) %s: the masks do not cancel, the round keeps "
                "the previous model and the next round starts over with the nodes that are there",
                server_round,
                missing,
            )
            return None, None
        updates = [_chunks(m.content.array_records[ARRAYS]) for m in valid]
        try:
            summed = he.add(self.session.ctx, updates)
        except he.HeError as exc:
            log.warning("round %d: cannot add the encrypted updates: %s", server_round, exc)
            return None, None
        weight = sum(_weight(m) for m in valid)
        metrics = self.train_metrics_aggr_fn([m.content for m in valid], self.weighted_by_key)
        return _chunk_record(summed, weight), metrics


def check_he_config(he_text: str, strategy: str, secure_aggregation: str = "") -> HeSpec | None:
    """Refuse a run config that cannot run under HE: a bad ``he`` value, a strategy other than plain
    FedAvg (robust or server-DP strategies need plaintext updates) or SecAgg+ at the same time."""
    from controller.federation.strategies import parse_spec

    spec = parse_he(he_text)
    if spec is None:
        return None
    checked = parse_spec(strategy)
    if checked.name != "fedavg" or checked.central_dp is not None:
        raise ValueError(
            f"HE aggregation runs FedAvg only (sums of ciphertexts), not {checked.name!r}"
            + (" with central DP" if checked.central_dp is not None else "")
        )
    if secure_aggregation:
        raise ValueError("HE and SecAgg+ exclude each other (he.masking adds pairwise masks to HE)")
    return spec


def he_strategy(
    grid: Grid,
    config: Any,
    *,
    job_id: str,
    min_nodes: int,
    cancel: threading.Event | None = None,
    cancelled: type[Exception] = HeSetupError,
) -> tuple[HeAggregation, HeFedAvg]:
    """The ServerApp's hook: run the key setup, then the FedAvg-on-ciphertexts strategy for the job."""
    from controller.federation.strategies import parse_spec

    spec = check_he_config(str(config["he"]), str(config["strategy"]), str(config["secure-aggregation"]))
    assert spec is not None
    session = HeAggregation.setup(
        grid,
        spec,
        job_id=job_id,
        min_nodes=min_nodes,
        timeout=float(config["round-timeout"]),
        cancel=cancel,
        cancelled=cancelled,
    )
    sampling = {
        "min_available_nodes": min_nodes,
        "min_train_nodes": min_nodes,
        "min_evaluate_nodes": min_nodes,
        **parse_spec(str(config["strategy"])).params,
    }
    return session, session.strategy(**sampling)
