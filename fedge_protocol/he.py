"""The HE-aggregation contract between the controller's ServerApp and the agent's ClientApp (Flower messages).

A job with ``privacy.he`` runs FedAvg on CKKS ciphertexts (TenSEAL). Before round 1 the ServerApp runs a
key setup with query messages (:class:`HeAction`), then every train/evaluate message carries the
:class:`HeKey` entries of its ``ConfigRecord`` and the encrypted global model as uint8 chunks in its
``ArrayRecord`` (:func:`chunk_name`, :data:`WEIGHT_ARRAY`). The design is in ``docs/fl-he.md``.

Stdlib only, like the rest of ``fedge_protocol``.
"""

from __future__ import annotations

from typing import Final

from fedge_protocol.federation import TrainKey

__all__ = ["CHUNK_PREFIX", "WEIGHT_ARRAY", "HeAction", "HeKey", "chunk_name", "seal_aad"]

#: name prefix of the ciphertext chunks in an ArrayRecord (``he-ct-00000``, ...)
CHUNK_PREFIX: Final = "he-ct-"
#: the plain total weight (sum of ``num-examples``) next to an aggregate's chunks
WEIGHT_ARRAY: Final = "he-weight"


def chunk_name(index: int) -> str:
    return f"{CHUNK_PREFIX}{index:05d}"


class HeAction:
    """Message types of the key setup and the final decryption (Flower ``query.<action>``)."""

    HELLO: Final = "query.he_hello"  # every node: reply with its device public key
    KEYGEN: Final = "query.he_keygen"  # the key holder: make the key set, seal it to the others
    KEY: Final = "query.he_key"  # every other node: open and keep the sealed secret context
    FINAL: Final = "query.he_final"  # the key holder: decrypt the final aggregate (the job's output)


class HeKey:
    """Keys of the ``ConfigRecord`` (``"config"``) in HE messages (plain strings)."""

    JOB_ID: Final = TrainKey.JOB_ID
    PARAMS: Final = "he-params"  # JSON: poly_modulus_degree, coeff_mod_bit_sizes, scale_bits
    FINGERPRINT: Final = "he-context-sha256"  # SHA-256 of the public context: which key set
    LAYOUT: Final = "he-layout"  # JSON [[name, shape, dtype], ...] of the plaintext model
    MASKING: Final = "he-masking"  # pairwise masks on top of HE
    PEERS: Final = "he-peers"  # node ids asked to train this round (the mask set)
    PEER_KEYS: Final = "he-peer-keys"  # their public keys (PEM), aligned with PEERS
    PUBLIC_KEY: Final = "he-public-key"  # a node's own public key (PEM), hello reply
    RECIPIENTS: Final = "he-recipients"  # keygen: node ids to seal to
    RECIPIENT_KEYS: Final = "he-recipient-keys"  # keygen: their public keys (PEM), aligned
    HOLDER: Final = "he-holder"  # the key holder's node id
    HOLDER_KEY: Final = "he-holder-key"  # the key holder's public key (PEM)
    PUBLIC_CONTEXT: Final = "he-public-context"  # keygen reply: public context only
    SEALED: Final = "he-sealed"  # keygen reply: sealed secret contexts, aligned with RECIPIENTS; key: one
    OK: Final = "he-ok"


def seal_aad(job_id: str, recipient: int, sender: int) -> bytes:
    """Associated data of a sealed secret context: bound to the job, setup round 0, recipient and sender."""
    return f"fedge-he-context|job={job_id}|round=0|recipient={recipient}|sender={sender}".encode()
