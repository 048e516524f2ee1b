"""Seal bytes to a device's enrolled EC P-256 key: static ECDH + HKDF-SHA256 + AES-256-GCM.

The sender's and the recipient's device keys agree on a shared secret (ECDH; the sender needs only the
recipient's public key and its own private-key ``exchange``); HKDF-SHA256 with a fresh random salt turns it
into a one-time AES-256-GCM key; the caller's associated data (e.g. job id, round, recipient, sender) is
authenticated, not sent. Only the recipient (with the sender's public key) can open the blob; a different
recipient, a different sender, different associated data or a changed byte fails with :class:`SealError`.

Blob: ``b"FSL1" | salt (16) | nonce (12) | AES-GCM ciphertext + tag``.

:func:`pair_seed` derives a pairwise secret seed (both ends compute the same one) from the same ECDH.
Pure ``cryptography``; the private key never leaves its ``exchange`` callable.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = [
    "Exchange",
    "SealError",
    "open_sealed",
    "pair_seed",
    "public_key_from_pem",
    "public_key_pem",
    "seal",
]

MAGIC = b"FSL1"
_SALT, _NONCE = 16, 12
_SEAL_INFO = b"fedge-seal-v1"
_PAIR_INFO = b"fedge-pair-seed-v1"

#: ECDH with the holder's private key: peer public key -> shared secret (``DeviceIdentity.exchange``)
Exchange = Callable[[ec.EllipticCurvePublicKey], bytes]


class SealError(ValueError):
    """A sealed blob cannot be opened: wrong recipient or sender, other associated data, or tampered."""


def public_key_pem(key: ec.EllipticCurvePublicKey) -> str:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def public_key_from_pem(pem: str | bytes) -> ec.EllipticCurvePublicKey:
    """An EC P-256 public key from PEM (SubjectPublicKeyInfo); anything else raises :class:`SealError`."""
    try:
        key = serialization.load_pem_public_key(pem.encode() if isinstance(pem, str) else pem)
    except ValueError as exc:
        raise SealError(f"not a PEM public key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise SealError("not an EC P-256 public key")
    return key


def _key(shared: bytes, salt: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=_SEAL_INFO).derive(shared)


def seal(exchange: Exchange, recipient: ec.EllipticCurvePublicKey, plaintext: bytes, *, aad: bytes) -> bytes:
    """Encrypt ``plaintext`` for ``recipient`` (the sender's key acts through ``exchange``)."""
    salt, nonce = os.urandom(_SALT), os.urandom(_NONCE)
    body = AESGCM(_key(exchange(recipient), salt)).encrypt(nonce, plaintext, aad)
    return MAGIC + salt + nonce + body


def open_sealed(exchange: Exchange, sender: ec.EllipticCurvePublicKey, blob: bytes, *, aad: bytes) -> bytes:
    """Open a blob :func:`seal` made for this key by ``sender``, under the same ``aad``."""
    head = len(MAGIC) + _SALT + _NONCE
    if len(blob) < head + 16 or not blob.startswith(MAGIC):
        raise SealError("not a sealed blob")
    salt, nonce = blob[len(MAGIC) : len(MAGIC) + _SALT], blob[len(MAGIC) + _SALT : head]
    try:
        return AESGCM(_key(exchange(sender), salt)).decrypt(nonce, blob[head:], aad)
    except InvalidTag as exc:
        raise SealError(
            "the sealed blob does not open: wrong key, other associated data or tampered"
        ) from exc


def pair_seed(exchange: Exchange, peer: ec.EllipticCurvePublicKey, context: bytes) -> bytes:
    """A 32-byte seed both ends of a pair derive alike (ECDH of their keys, HKDF over ``context``)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_PAIR_INFO + context).derive(
        exchange(peer)
    )
