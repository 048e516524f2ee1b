"""The signing envelope of documents the controller sends to devices.

A signed document is ``{"alg": "ES256", "payload": b64url(canonical JSON), "signature": b64url(DER
ECDSA-SHA256 over context + payload bytes)}``, signed by the device CA that the device pinned at
enrollment. Each document type has its own domain-separation context, so a command can never pass as a
desired state (or the other way round), and neither can pass as an X.509 ``TBSCertificate`` (DER, first
byte 0x30) signed by the same key: every context is ASCII text starting with ``fedge-``.

Only the bytes are defined here (stdlib only); the controller signs and the agent verifies with
``cryptography``.
"""

from __future__ import annotations

import base64
import json
from enum import StrEnum
from typing import Any

ALGORITHM = "ES256"


class DocumentType(StrEnum):
    """The ``type`` field of every signed document."""

    DESIRED_STATE = "fedge.desired-state"
    COMMAND = "fedge.command"

    @property
    def context(self) -> bytes:
        """The domain-separation prefix signed before the payload bytes."""
        return CONTEXTS[self]

    @property
    def label(self) -> str:
        """In words, for error messages (``desired state``, ``command``)."""
        return self.value.removeprefix("fedge.").replace("-", " ")


CONTEXTS: dict[DocumentType, bytes] = {
    DocumentType.DESIRED_STATE: b"fedge-desired-state-v1\n",
    DocumentType.COMMAND: b"fedge-command-v1\n",
}


def canonical_json(obj: Any) -> bytes:
    """Deterministic JSON (sorted keys, no spaces, ASCII): the bytes that get signed and hashed."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def signing_input(doc_type: DocumentType, body: bytes) -> bytes:
    """What the signature covers: the type's context, then the canonical payload bytes."""
    return doc_type.context + body


def envelope(body: bytes, signature: bytes) -> dict[str, str]:
    """The wire form of a signed document."""
    return {"alg": ALGORITHM, "payload": b64url(body), "signature": b64url(signature)}


class MalformedEnvelope(ValueError):
    """The envelope is not ``{alg, payload, signature}`` with base64url strings."""


def open_envelope(obj: Any) -> tuple[bytes, bytes]:
    """(payload bytes, signature bytes) of an envelope, before any signature check."""
    try:
        return b64url_decode(str(obj["payload"])), b64url_decode(str(obj["signature"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise MalformedEnvelope(f"malformed signed document: {exc}") from exc
