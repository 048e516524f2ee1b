"""Verification of documents signed by the device CA pinned at enrollment (desired states, commands).

The envelope, the per-type signing contexts and the document types are the protocol's
(:mod:`fedge_protocol.envelope`); this module only checks signatures with ``cryptography``.
"""

from __future__ import annotations

import json
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from fedge_protocol.envelope import DocumentType, MalformedEnvelope, open_envelope, signing_input
from fedge_protocol.status import CommandKind

MODEL_LESS = frozenset({CommandKind.FL_JOIN, CommandKind.FL_LEAVE})
"""Command kinds that name no model version."""


class SignatureInvalid(ValueError):
    """The document is malformed, not signed by the pinned CA, or not meant for this device."""


def _verify(envelope: Any, ca: x509.Certificate, doc_type: DocumentType) -> dict[str, Any]:
    what = doc_type.label.replace(" ", "-")
    try:
        body, signature = open_envelope(envelope)
    except MalformedEnvelope as exc:
        raise SignatureInvalid(str(exc)) from exc
    key = ca.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise SignatureInvalid("the pinned CA certificate does not hold an EC key")
    try:
        key.verify(signature, signing_input(doc_type, body), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise SignatureInvalid(f"{what} signature does not verify against the pinned CA") from exc
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise SignatureInvalid(f"signed {what} is not JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise SignatureInvalid(f"signed {what} is not a JSON object")
    return payload


def _verify_for_device(
    envelope: Any, ca: x509.Certificate, device_id: str, doc_type: DocumentType
) -> dict[str, Any]:
    """Signature (in the type's context), document type and addressee of a signed envelope; its payload."""
    payload = _verify(envelope, ca, doc_type)
    name = doc_type.label
    if payload.get("type") != doc_type:
        raise SignatureInvalid(f"signed document is not a {name}")
    if payload.get("device_id") != device_id:
        raise SignatureInvalid(f"{name} is for device {payload.get('device_id')}, not {device_id}")
    return payload


def verify_desired_state(envelope: Any, ca: x509.Certificate, device_id: str) -> dict[str, Any]:
    """The payload of a signed desired-state envelope, after checking signature, type and device id."""
    return _verify_for_device(envelope, ca, device_id, DocumentType.DESIRED_STATE)


def verify_command(envelope: Any, ca: x509.Certificate, device_id: str) -> dict[str, Any]:
    """The payload of a signed command envelope (command context, type ``fedge.command``, this device)."""
    payload = _verify_for_device(envelope, ca, device_id, DocumentType.COMMAND)
    if not isinstance(payload.get("command_id"), str):
        raise SignatureInvalid("signed command lacks command_id")
    if payload.get("kind") not in MODEL_LESS and not isinstance(payload.get("model"), dict):
        raise SignatureInvalid("signed command lacks model")  # every kind but fl-join/fl-leave names one
    return payload
