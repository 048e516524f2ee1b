"""Device lifecycle on the controller: the problems a device must tell apart from transient failures
(revoked, certificate expired; slugs from :mod:`fedge_protocol.lifecycle`) and certificate renewal.

Renewal keeps the device key: the CSR must be signed by (proof of possession) and hold the public key of
the device's current certificate; a foreign key is refused (a new key needs a new enrollment). The new
certificate replaces the row's certificate and serial in one transaction; the old one stays valid until
it expires (it is superseded, not revoked: the agent keeps it until the new one checks out). Revocation
still cuts off every certificate of the device: the broker's ACL names the device id, and device tokens
are checked against the row's status on every request.
"""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from sqlalchemy.orm import Session, sessionmaker

from controller.db.models import Device
from controller.errors import NotFound, Unauthorized, Unprocessable
from controller.fleet.ca import CsrRejected, DeviceCA
from fedge_protocol.lifecycle import (
    DEVICE_CERTIFICATE_EXPIRED,
    DEVICE_REVOKED,
    DEVICE_STATUS_FIELD,
    DEVICE_STATUS_REVOKED,
    RenewedCertificate,
)


class DeviceRevoked(Unauthorized):
    """401 ``device-revoked``: the device must stop (not retry); only a new enrollment brings it back."""

    title, slug = "Device revoked", DEVICE_REVOKED

    def __init__(self, device_id: str) -> None:
        super().__init__(
            f"device {device_id} has been revoked; enroll again to come back",
            **{DEVICE_STATUS_FIELD: DEVICE_STATUS_REVOKED},
        )


class CertificateExpired(Unauthorized):
    """401 ``device-certificate-expired``: the device's certificate is past its validity."""

    title, slug = "Device certificate expired", DEVICE_CERTIFICATE_EXPIRED


def _spki(public: object) -> bytes:
    return public.public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def check_not_expired(device_id: str, certificate: x509.Certificate, now: dt.datetime) -> None:
    """Refuse a device whose certificate has expired (:class:`CertificateExpired`)."""
    if certificate.not_valid_after_utc <= now:
        raise CertificateExpired(
            f"the certificate of device {device_id} expired at "
            f"{certificate.not_valid_after_utc.isoformat()}; enroll the device again"
        )


def renew_certificate(
    sessions: sessionmaker[Session], ca: DeviceCA, device_id: str, csr_pem: str
) -> RenewedCertificate:
    """Sign a new certificate for the device's own key and store it (certificate, serial) atomically."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
    except ValueError as exc:
        raise Unprocessable(f"csr is not a PEM certificate signing request: {exc}", field="csr") from exc
    with sessions.begin() as s:
        device = s.get(Device, device_id, with_for_update=True)
        if device is None:
            raise NotFound(f"device {device_id} not found")
        if device.status != "active":
            raise DeviceRevoked(device_id)
        current = x509.load_pem_x509_certificate(device.certificate.encode())
        try:
            if _spki(csr.public_key()) != _spki(current.public_key()):
                raise Unprocessable(
                    "the csr's key is not this device's key "
                    "(renewal keeps the key; enroll again to change it)",
                    field="csr",
                )
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:  # a key type we cannot read
            raise Unprocessable(f"csr key is not usable: {exc}", field="csr") from exc
        try:
            cert = ca.sign_csr(csr_pem, device_id)
        except CsrRejected as exc:
            raise Unprocessable(str(exc), field="csr") from exc
        pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        serial = format(cert.serial_number, "x")
        device.certificate, device.cert_serial = pem, serial
    return RenewedCertificate(
        device_id=device_id, certificate=pem, serial=serial, not_after=cert.not_valid_after_utc
    )
