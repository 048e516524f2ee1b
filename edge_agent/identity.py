"""Device identity: an EC P-256 key made on the device (never sent anywhere), enrollment with a one-time
token, credentials stored 0600 in the state directory, ES256 tokens signed with the device key.

The private key is reachable only through ``DeviceIdentity.sign_jwt`` and ``DeviceIdentity.exchange``
(ECDH, for keys sealed to this device later): nothing here returns its bytes.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from fedge_common.files import atomic_write
from fedge_common.tls import describe as tls_describe
from fedge_protocol import Enrollment, EnrollRequest, paths

KEY_FILE, CERT_FILE, CA_FILE, IDENTITY_FILE = "device.key", "device.pem", "ca.pem", "identity.json"
REVOKED_FILE = "revoked.json"
"""Written when the controller revoked the device (edge_agent.lifecycle); a new enrollment removes it."""


class EnrollmentError(Exception):
    """Enrollment was refused or its answer does not check out."""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True)
class DeviceIdentity:
    """An enrolled device: id, certificate, pinned CA and where the controller is."""

    device_id: str
    api_url: str
    audience: str
    broker_url: str | None
    certificate: x509.Certificate
    ca_certificate: x509.Certificate
    _key: ec.EllipticCurvePrivateKey

    def __repr__(self) -> str:
        return f"DeviceIdentity(device_id={self.device_id!r}, api_url={self.api_url!r})"

    @classmethod
    def load(cls, state_dir: Path) -> DeviceIdentity:
        path = state_dir / IDENTITY_FILE
        if not path.exists():
            raise EnrollmentError(f"{state_dir} holds no identity; run 'fedge-agent enroll' first")
        meta = json.loads(path.read_text())
        key = serialization.load_pem_private_key((state_dir / KEY_FILE).read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise EnrollmentError("device key is not an EC key")
        return cls(
            device_id=meta["device_id"],
            api_url=meta["api_url"],
            audience=meta["audience"],
            broker_url=meta.get("broker_url"),
            certificate=x509.load_pem_x509_certificate((state_dir / CERT_FILE).read_bytes()),
            ca_certificate=x509.load_pem_x509_certificate((state_dir / CA_FILE).read_bytes()),
            _key=key,
        )

    def sign_jwt(self, ttl_seconds: int = 300, now: float | None = None) -> str:
        """A short-lived ES256 JWT (iss = sub = device id) for the controller API."""
        issued = int(now if now is not None else time.time())
        header = {"alg": "ES256", "typ": "JWT", "kid": self.device_id}
        claims = {
            "iss": self.device_id,
            "sub": self.device_id,
            "aud": self.audience,
            "iat": issued,
            "exp": issued + min(ttl_seconds, 300),
            "jti": uuid.uuid4().hex,
        }
        signing_input = (
            _b64url(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + _b64url(json.dumps(claims, separators=(",", ":")).encode())
        )
        der = self._key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return signing_input + "." + _b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))

    def csr(self) -> str:
        """A PEM CSR signed with the device key (certificate renewal keeps the key)."""
        return make_csr(self._key)

    def exchange(self, peer: ec.EllipticCurvePublicKey) -> bytes:
        """ECDH shared secret with a peer P-256 key (to open keys sealed to this device)."""
        return self._key.exchange(ec.ECDH(), peer)


def make_csr(key: ec.EllipticCurvePrivateKey) -> str:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedge-device")]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _problem_detail(resp: httpx.Response) -> str:
    try:
        body: Any = resp.json()
        return str(body.get("detail") or body)
    except ValueError:
        return resp.text[:300]


def enroll(
    controller: str,
    token: str,
    state_dir: Path,
    labels: dict[str, str] | None = None,
    facts: dict[str, Any] | None = None,
    *,
    transport: httpx.BaseTransport | None = None,
    verify: ssl.SSLContext | bool = True,
) -> DeviceIdentity:
    """Make a key pair here, send a CSR with the one-time token, check and store what comes back.
    ``verify``: the pinned controller CA's context (:func:`edge_agent.tls.controller_verify`)."""
    from edge_agent.facts import hardware_facts

    state_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(state_dir, 0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    body = EnrollRequest(
        token=token,
        csr=make_csr(key),
        labels=labels or {},
        facts=facts if facts is not None else hardware_facts(),
    )
    try:
        with httpx.Client(
            base_url=controller.rstrip("/"), timeout=30, transport=transport, verify=verify
        ) as client:
            resp = client.post(paths.ENROLLMENTS, json=body.model_dump())
    except httpx.HTTPError as exc:
        raise EnrollmentError(f"enrollment at {controller}: {tls_describe(exc)}") from exc
    if resp.status_code != 201:
        raise EnrollmentError(f"enrollment refused ({resp.status_code}): {_problem_detail(resp)}")
    try:
        answer = Enrollment.model_validate_json(resp.content)
    except ValueError as exc:
        raise EnrollmentError(f"the controller's enrollment answer is malformed: {exc}") from exc
    cert = x509.load_pem_x509_certificate(answer.certificate.encode())
    ca = x509.load_pem_x509_certificate(answer.ca_certificate.encode())
    pub = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    cert_pub = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if pub != cert_pub:
        raise EnrollmentError("the certificate returned is not for this device's key")
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError) as exc:
        raise EnrollmentError(f"the certificate is not signed by the CA returned with it: {exc}") from exc
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    if cn != answer.device_id:
        raise EnrollmentError("certificate CN differs from the device id")
    atomic_write(
        state_dir / KEY_FILE,
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )
    atomic_write(state_dir / CERT_FILE, answer.certificate.encode())
    atomic_write(state_dir / CA_FILE, answer.ca_certificate.encode())
    meta = {
        "device_id": answer.device_id,
        "api_url": controller.rstrip("/"),
        "advertised_api_url": answer.api_url,
        "audience": answer.audience,
        "broker_url": answer.broker_url,
    }
    atomic_write(state_dir / IDENTITY_FILE, json.dumps(meta, indent=2).encode())
    (state_dir / REVOKED_FILE).unlink(missing_ok=True)  # a new enrollment: no longer revoked
    return DeviceIdentity.load(state_dir)
