"""The controller-held device CA: EC P-256 key + self-signed certificate, CSR signing, document signing.

The CA key signs two kinds of things, kept apart by construction: X.509 device certificates (DER
``TBSCertificate``, an ASN.1 SEQUENCE starting with byte 0x30) and signed documents (desired states,
commands), which are signed as ``context + canonical JSON`` with a per-type context (ASCII text starting
with ``fedge-``; :mod:`fedge_protocol.envelope`), so that none can be replayed as another.
"""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedge_common.files import atomic_write
from fedge_protocol.envelope import DocumentType, canonical_json, envelope, signing_input

CERT_DAYS = 365
CA_DAYS = 3650


class CsrRejected(ValueError):
    """The certificate signing request is malformed, badly signed or uses a key type we refuse."""


class DeviceCA:
    """Loads (or creates on first start) the device CA under ``<data_dir>/fleet``."""

    def __init__(
        self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate, cert_seconds: int = CERT_DAYS * 86400
    ) -> None:
        self._key = key
        self.certificate = cert
        self.cert_seconds = cert_seconds
        """Lifetime of the device certificates it signs (FEDGE_DEVICE_CERT_SECONDS)."""

    @classmethod
    def load_or_create(cls, directory: Path, cert_seconds: int = CERT_DAYS * 86400) -> DeviceCA:
        directory.mkdir(parents=True, exist_ok=True)
        key_path, cert_path = directory / "device-ca.key", directory / "device-ca.pem"
        if key_path.exists() and cert_path.exists():
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise ValueError(f"{key_path} is not an EC private key")
            return cls(key, x509.load_pem_x509_certificate(cert_path.read_bytes()), cert_seconds)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedge device CA")])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        atomic_write(key_path, pem)  # owner only (0600)
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cls(key, cert, cert_seconds)

    @property
    def certificate_pem(self) -> str:
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode()

    def sign_csr(self, csr_pem: str, device_id: str) -> x509.Certificate:
        """A device certificate (CN = ``device_id``) for the CSR's public key, which must be EC P-256."""
        try:
            csr = x509.load_pem_x509_csr(csr_pem.encode())
        except ValueError as exc:
            raise CsrRejected(f"csr is not a PEM certificate signing request: {exc}") from exc
        if not csr.is_signature_valid:
            raise CsrRejected("csr signature does not verify (proof of key possession failed)")
        public = csr.public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey) or public.curve.name != "secp256r1":
            raise CsrRejected("device keys must be EC P-256 (secp256r1)")
        now = dt.datetime.now(dt.UTC)
        backdate = min(300, self.cert_seconds // 10)  # clock skew, without eating a short test lifetime
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
            .issuer_name(self.certificate.subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(seconds=backdate))
            .not_valid_after(now + dt.timedelta(seconds=self.cert_seconds))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=True,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(f"urn:uuid:{uuid.UUID(device_id)}")]
                ),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )

    def sign_certificate(self, builder: x509.CertificateBuilder) -> x509.Certificate:
        """Sign a certificate built elsewhere (the broker's server and service-client certificates)."""
        return builder.sign(self._key, hashes.SHA256())

    def sign_crl(self, builder: x509.CertificateRevocationListBuilder) -> x509.CertificateRevocationList:
        """Sign a CRL of revoked device certificates (read by the MQTT broker)."""
        return builder.sign(self._key, hashes.SHA256())

    def sign_document(
        self, payload: dict[str, Any], doc_type: DocumentType = DocumentType.DESIRED_STATE
    ) -> dict[str, str]:
        """An envelope ``{alg, payload, signature}``: ``payload`` is base64url canonical JSON,
        ``signature`` the base64url DER ECDSA-SHA256 signature over the document type's context + the
        payload bytes (so a command can never pass as a desired state, nor the other way round)."""
        body = canonical_json(payload)
        signature = self._key.sign(signing_input(doc_type, body), ec.ECDSA(hashes.SHA256()))
        return envelope(body, signature)
