"""The device lifecycle words of the protocol: the problem types a device must tell apart from a transient
failure (a revoked device stops; an expired certificate needs a re-enrollment), and certificate renewal.

A problem's ``type`` is :func:`problem_type` of its slug; the body of a revocation also carries
``device_status = DEVICE_STATUS_REVOKED``.
"""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, Field

PROBLEM_TYPE_BASE = "https://fedge.dev/problems/"
DEVICE_REVOKED = "device-revoked"
"""Slug of the 401 a revoked device gets on every authenticated request: stop, do not retry."""
DEVICE_CERTIFICATE_EXPIRED = "device-certificate-expired"
"""Slug of the 401 a device whose certificate has expired gets (renewal came too late: re-enroll)."""
DEVICE_STATUS_REVOKED = "revoked"
DEVICE_STATUS_FIELD = "device_status"
"""Field of a device-revoked problem holding ``DEVICE_STATUS_REVOKED``."""
MAX_CSR_CHARS = 8192


def problem_type(slug: str) -> str:
    """The RFC 7807 ``type`` URI of a fedge problem slug."""
    return PROBLEM_TYPE_BASE + slug


class CertificateRenewal(BaseModel):
    """``POST paths.CERTIFICATE``: a CSR signed with the device's own key (the key does not change)."""

    csr: str = Field(min_length=1, max_length=MAX_CSR_CHARS, description="PEM CSR signed by the device key")


class RenewedCertificate(BaseModel):
    """The controller's answer: the new certificate (same key, new serial and validity)."""

    device_id: str
    certificate: str
    serial: str
    not_after: dt.datetime
