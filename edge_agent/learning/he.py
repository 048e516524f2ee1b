"""HE aggregation on the device: the key-setup handlers and the mod around train/evaluate.

The ServerApp (``controller.federation.he``) drives a key setup with query messages
(:class:`fedge_protocol.he.HeAction`) before round 1:

* ``he_hello``: reply with this node's public key (the enrolled device key; :func:`node_keys`);
* ``he_keygen`` (the key holder only): make a CKKS key set, keep its secret context, seal that secret
  context to every other participant's public key (:mod:`fedge_common.sealing`: ECDH of the two device
  keys, HKDF-SHA256, AES-GCM, associated data = job, round 0, recipient, sender) and reply with the
  **public** context (public key only) and the sealed blobs;
* ``he_key``: open the blob the holder sealed to this node, check that its public part is the one the
  job names (SHA-256 fingerprint) and keep it;
* ``he_final`` (the key holder): decrypt the final aggregate, the job's output, and reply with it.

:func:`make_he_mod` then wraps train and evaluate messages that name a key set (``he-context-sha256``):
an encrypted global model coming in is decrypted (sum / total weight) before the handler sees it; a
train reply going out is replaced by ``num-examples x parameters`` (+ the pairwise masks when the job
masks), encrypted in chunks. Local DP runs inside the handler, so DP comes first, then encryption.

Secret contexts live in ``<state dir>/he/<job>.ctx`` (0600). A device that is not enrolled (simulation,
bench) uses its own P-256 key in ``<state dir>/he/node.key`` instead of the device key.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable

from edge_agent.identity import IDENTITY_FILE, DeviceIdentity
from fedge_common import he
from fedge_common.files import atomic_write
from fedge_common.sealing import Exchange, open_sealed, pair_seed, public_key_from_pem, public_key_pem, seal
from fedge_protocol.federation import ARRAYS, CONFIG, ReplyKey, TrainKey
from fedge_protocol.he import CHUNK_PREFIX, WEIGHT_ARRAY, HeAction, HeKey, chunk_name, seal_aad

__all__ = ["HeRefused", "NodeKeys", "encrypt_update", "make_he_mod", "node_keys", "register_he"]

log = logging.getLogger("fedge.agent.learning")

HE_DIR, NODE_KEY_FILE = "he", "node.key"


class HeRefused(RuntimeError):
    """An HE message this device will not serve (it raises; Flower replies with a failure)."""


@dataclass(frozen=True)
class NodeKeys:
    """This node's key agreement: its public key and ECDH with its private key (never its bytes)."""

    public: ec.EllipticCurvePublicKey
    exchange: Exchange


def node_keys(state_dir: Path) -> NodeKeys:
    """The enrolled device key when the state directory holds an identity, else a node key of its own."""
    if (state_dir / IDENTITY_FILE).exists():
        identity = DeviceIdentity.load(state_dir)
        public = identity.certificate.public_key()
        assert isinstance(public, ec.EllipticCurvePublicKey)
        return NodeKeys(public, identity.exchange)
    path = state_dir / HE_DIR / NODE_KEY_FILE
    if not path.exists():
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, pem, mode=0o600)
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(loaded, ec.EllipticCurvePrivateKey):
        raise HeRefused(f"{path} is not an EC key")
    private = loaded
    return NodeKeys(private.public_key(), lambda peer: private.exchange(ec.ECDH(), peer))


def _safe(job: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", job) or "job"


class _Store:
    """The job's secret context and its parameters on this device."""

    def __init__(self, state_dir: Path, job: str) -> None:
        self.ctx_path = state_dir / HE_DIR / f"{_safe(job)}.ctx"
        self.meta_path = state_dir / HE_DIR / f"{_safe(job)}.json"

    def save(self, secret: bytes, params: he.HeParams, fingerprint: str) -> None:
        self.ctx_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.ctx_path, secret, mode=0o600)
        meta = {"params": params.to_json(), "fingerprint": fingerprint}
        atomic_write(self.meta_path, json.dumps(meta).encode(), mode=0o600)

    def load(self, fingerprint: str) -> tuple[Any, he.HeParams]:
        if not self.meta_path.exists():
            raise HeRefused("this device holds no key set for the job (it missed the key setup)")
        meta = json.loads(self.meta_path.read_text())
        if meta["fingerprint"] != fingerprint:
            raise HeRefused("the job's key set is not the one this device holds")
        params = he.HeParams.from_json(meta["params"])
        ctx = he.load_secret_context(self.ctx_path.read_bytes())
        ctx.global_scale = 2.0**params.scale_bits
        return ctx, params


def _config(msg: Message) -> ConfigRecord:
    records = msg.content.config_records
    if CONFIG not in records:
        raise HeRefused(f"the message carries no {CONFIG!r} ConfigRecord")
    return records[CONFIG]


def _get(cfg: ConfigRecord, key: str, kind: type | tuple[type, ...]) -> Any:
    value = cfg.get(key)
    if not isinstance(value, kind):
        raise HeRefused(f"{key!r} is missing or not {kind}")
    return value


def _own(msg: Message) -> int:
    return int(msg.metadata.dst_node_id)


def _reply(msg: Message, values: dict[str, Any]) -> Message:
    return Message(RecordDict({CONFIG: ConfigRecord(values)}), reply_to=msg)


def _chunks(record: ArrayRecord) -> list[bytes]:
    names = sorted(n for n in record if n.startswith(CHUNK_PREFIX))
    if names != [chunk_name(i) for i in range(len(names))]:
        raise HeRefused("the ciphertext chunks are not numbered 0..n-1")
    return [record[n].numpy().tobytes() for n in names]


def chunk_record(chunks: list[bytes], weight: float | None = None) -> ArrayRecord:
    """Ciphertext chunks (and an aggregate's total weight) as an ArrayRecord of uint8 arrays."""
    arrays = {chunk_name(i): Array(np.frombuffer(c, dtype=np.uint8)) for i, c in enumerate(chunks)}
    if weight is not None:
        arrays[WEIGHT_ARRAY] = Array(np.asarray([weight], dtype=np.float64))
    return ArrayRecord(arrays)


def decrypt_aggregate(ctx: Any, record: ArrayRecord, layout: he.Layout) -> ArrayRecord:
    """An encrypted aggregate (weighted sum + total weight) -> the plaintext weighted mean."""
    if WEIGHT_ARRAY not in record:
        raise HeRefused(f"the aggregate carries no {WEIGHT_ARRAY!r}")
    weight = float(record[WEIGHT_ARRAY].numpy()[0])
    if not weight > 0:
        raise HeRefused(f"the aggregate's total weight is {weight}")
    vector = he.decrypt(ctx, _chunks(record), he.layout_size(layout)) / weight
    return ArrayRecord({n: Array(np.ascontiguousarray(a)) for n, a in he.unflatten(vector, layout).items()})


def encrypt_update(
    ctx: Any,
    params: he.HeParams,
    arrays: ArrayRecord,
    weight: float,
    layout: he.Layout,
    *,
    masks: np.ndarray[Any, Any] | None = None,
) -> ArrayRecord:
    """``weight x arrays`` (+ ``masks``) encrypted in chunks; the arrays must follow ``layout``."""
    vector, got = he.flatten({n: a.numpy() for n, a in arrays.items()})
    if [(n, s) for n, s, _ in got] != [(n, s) for n, s, _ in layout]:
        raise HeRefused("the trained parameters do not follow the job's layout")
    values = weight * vector
    if masks is not None:
        values = values + masks
    return chunk_record(he.encrypt(ctx, values, params))


def _masks(
    keys: NodeKeys, cfg: ConfigRecord, own: int, job: str, server_round: int, length: int, params: he.HeParams
) -> np.ndarray[Any, Any]:
    peers = [int(p) for p in _get(cfg, HeKey.PEERS, list)]
    pems = [str(p) for p in _get(cfg, HeKey.PEER_KEYS, list)]
    if own not in peers or len(pems) != len(peers):
        raise HeRefused("the round's mask set does not include this node")
    if public_key_from_pem(pems[peers.index(own)]).public_numbers() != keys.public.public_numbers():
        raise HeRefused("the round's mask set names another key for this node")
    seeds = {}
    for peer, pem in zip(peers, pems, strict=True):
        if peer == own:
            continue
        low, high = min(own, peer), max(own, peer)
        context = f"fedge-he-mask|job={job}|round={server_round}|pair={low},{high}".encode()
        seeds[peer] = (1 if own < peer else -1, pair_seed(keys.exchange, public_key_from_pem(pem), context))
    return he.pairwise_mask(seeds, length, params.mask_amplitude(len(peers)))


def make_he_mod(
    state_dir_for: Callable[[Context], Path],
) -> Callable[[Message, Context, ClientAppCallable], Message]:
    """A Flower mod: decrypt an encrypted global model coming in, encrypt the train reply going out."""

    def he_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        kind = msg.metadata.message_type
        records = msg.content.config_records
        if kind not in (MessageType.TRAIN, MessageType.EVALUATE) or CONFIG not in records:
            return call_next(msg, context)
        cfg = records[CONFIG]
        if HeKey.FINGERPRINT not in cfg:
            return call_next(msg, context)
        job = str(_get(cfg, TrainKey.JOB_ID, str))
        ctx, params = _Store(state_dir_for(context), job).load(str(_get(cfg, HeKey.FINGERPRINT, str)))
        layout = he.layout_from_json(str(_get(cfg, HeKey.LAYOUT, str)))
        incoming = msg.content.array_records.get(ARRAYS)
        if incoming is not None and any(n.startswith(CHUNK_PREFIX) for n in incoming):
            msg.content[ARRAYS] = decrypt_aggregate(ctx, incoming, layout)
        reply = call_next(msg, context)
        if kind != MessageType.TRAIN or reply.has_error():
            return reply
        metrics = next(iter(reply.content.metric_records.values()))
        weight = float(metrics[ReplyKey.NUM_EXAMPLES])  # type: ignore[arg-type]
        masks = None
        if bool(cfg.get(HeKey.MASKING, False)):
            server_round = int(_get(cfg, TrainKey.SERVER_ROUND, int))
            keys = node_keys(state_dir_for(context))
            masks = _masks(keys, cfg, _own(msg), job, server_round, he.layout_size(layout), params)
        trained = reply.content.array_records[ARRAYS]
        reply.content[ARRAYS] = encrypt_update(ctx, params, trained, weight, layout, masks=masks)
        return reply

    return he_mod


def register_he(app: ClientApp, state_dir_for: Callable[[Context], Path]) -> None:
    """Register the key-setup and final-decryption query handlers on ``app``."""

    @app.query(HeAction.HELLO.split(".")[1])
    def hello(msg: Message, context: Context) -> Message:
        keys = node_keys(state_dir_for(context))
        return _reply(msg, {HeKey.PUBLIC_KEY: public_key_pem(keys.public)})

    @app.query(HeAction.KEYGEN.split(".")[1])
    def keygen(msg: Message, context: Context) -> Message:
        cfg = _config(msg)
        job = str(_get(cfg, HeKey.JOB_ID, str))
        params = he.HeParams.from_json(str(_get(cfg, HeKey.PARAMS, str)))
        recipients = [int(r) for r in cfg.get(HeKey.RECIPIENTS, []) or []]  # type: ignore[union-attr]
        pems = [str(p) for p in cfg.get(HeKey.RECIPIENT_KEYS, []) or []]  # type: ignore[union-attr]
        if len(recipients) != len(pems):
            raise HeRefused("recipients and their keys differ in number")
        keys, own = node_keys(state_dir_for(context)), _own(msg)
        secret = he.new_secret_context(params)
        public = he.public_context(secret)
        fingerprint = he.fingerprint(public)
        _Store(state_dir_for(context), job).save(secret, params, fingerprint)
        sealed = [
            seal(keys.exchange, public_key_from_pem(pem), secret, aad=seal_aad(job, node, own))
            for node, pem in zip(recipients, pems, strict=True)
        ]
        log.info("job %s: made the HE key set %s, sealed to %d node(s)", job, fingerprint[:12], len(sealed))
        return _reply(
            msg, {HeKey.PUBLIC_CONTEXT: public, HeKey.SEALED: sealed, HeKey.FINGERPRINT: fingerprint}
        )

    @app.query(HeAction.KEY.split(".")[1])
    def key(msg: Message, context: Context) -> Message:
        cfg = _config(msg)
        job = str(_get(cfg, HeKey.JOB_ID, str))
        holder = int(_get(cfg, HeKey.HOLDER, int))
        params = he.HeParams.from_json(str(_get(cfg, HeKey.PARAMS, str)))
        fingerprint = str(_get(cfg, HeKey.FINGERPRINT, str))
        keys = node_keys(state_dir_for(context))
        sender = public_key_from_pem(str(_get(cfg, HeKey.HOLDER_KEY, str)))
        secret = open_sealed(
            keys.exchange, sender, _get(cfg, HeKey.SEALED, bytes), aad=seal_aad(job, _own(msg), holder)
        )
        if he.fingerprint(he.public_context(secret)) != fingerprint:
            raise HeRefused("the sealed key set is not the one the job names")
        _Store(state_dir_for(context), job).save(secret, params, fingerprint)
        return _reply(msg, {HeKey.OK: True})

    @app.query(HeAction.FINAL.split(".")[1])
    def final(msg: Message, context: Context) -> Message:
        cfg = _config(msg)
        job = str(_get(cfg, HeKey.JOB_ID, str))
        ctx, _ = _Store(state_dir_for(context), job).load(str(_get(cfg, HeKey.FINGERPRINT, str)))
        layout = he.layout_from_json(str(_get(cfg, HeKey.LAYOUT, str)))
        if ARRAYS not in msg.content.array_records:
            raise HeRefused(f"the message carries no {ARRAYS!r} ArrayRecord")
        plain = decrypt_aggregate(ctx, msg.content.array_records[ARRAYS], layout)
        log.info("job %s: decrypted the final aggregate (the job's output) for the controller", job)
        return Message(RecordDict({ARRAYS: plain}), reply_to=msg)
