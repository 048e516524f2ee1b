"""Verification of desired-state documents signed by the device CA pinned at enrollment."""

from __future__ import annotations

import base64
import json
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

DOCUMENT_CONTEXT = b"fedge-desired-state-v1\n"  # same domain-separation prefix as the controller's
COMMAND_CONTEXT = b"fedge-command-v1\n"  # device commands: a different prefix, so neither passes as the other


class SignatureInvalid(ValueError):
    """The document is malformed, not signed by the pinned CA, or not meant for this device."""


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _verify(envelope: Any, ca: x509.Certificate, context: bytes, what: str) -> dict[str, Any]:
    try:
        body = _unb64(str(envelope["payload"]))
        signature = _unb64(str(envelope["signature"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise SignatureInvalid(f"malformed signed document: {exc}") from exc
    key = ca.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise SignatureInvalid("the pinned CA certificate does not hold an EC key")
    try:
        key.verify(signature, context + body, ec.ECDSA(hashes.SHA256()))
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
    envelope: Any, ca: x509.Certificate, device_id: str, context: bytes, doc_type: str, name: str
) -> dict[str, Any]:
    """Signature (in ``context``), document type and addressee of a signed envelope; its payload."""
    payload = _verify(envelope, ca, context, name.replace(" ", "-"))
    if payload.get("type") != doc_type:
        raise SignatureInvalid(f"signed document is not a {name}")
    if payload.get("device_id") != device_id:
        raise SignatureInvalid(f"{name} is for device {payload.get('device_id')}, not {device_id}")
    return payload


def verify_desired_state(envelope: Any, ca: x509.Certificate, device_id: str) -> dict[str, Any]:
    """The payload of a signed desired-state envelope, after checking signature, type and device id."""
    return _verify_for_device(
        envelope, ca, device_id, DOCUMENT_CONTEXT, "fedge.desired-state", "desired state"
    )


def verify_command(envelope: Any, ca: x509.Certificate, device_id: str) -> dict[str, Any]:
    """The payload of a signed command envelope (command context, type ``fedge.command``, this device)."""
    payload = _verify_for_device(envelope, ca, device_id, COMMAND_CONTEXT, "fedge.command", "command")
    if not isinstance(payload.get("command_id"), str) or not isinstance(payload.get("model"), dict):
        raise SignatureInvalid("signed command lacks command_id or model")
    return payload
