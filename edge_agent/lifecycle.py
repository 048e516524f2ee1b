"""The device's lifecycle on the agent: revocation (stop for good, survive restarts) and certificate
renewal before expiry.

Revocation: the controller answers a revoked device's every request with a 401 problem of type
``device-revoked`` (:mod:`fedge_protocol.lifecycle`), unlike a transient failure or an expired token. The
link (:class:`edge_agent.link.client.ControllerLink`) sees it, refuses every later request without
sending it, and calls :meth:`Lifecycle.mark_revoked`: a marker ``revoked.json`` is written atomically in
the state directory (a restart stays revoked; a new enrollment removes it), the event is logged once, the
deploy loop stops polling, the MQTT link is stopped, and the local API refuses inference unless
``FEDGE_AGENT_KEEP_SERVING_WHEN_REVOKED`` keeps the last model serving.

Renewal: when less than ``renew_fraction`` of the certificate's lifetime is left, the agent sends a CSR
signed with its own key (the key does not change) to ``POST /v1/devices/{id}/certificate``. The answer is
checked (signed by the pinned CA, this device's key and id, valid longer than the current one) before it
replaces ``device.pem`` atomically; the certificate it replaces is kept as ``device.pem.prev``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from edge_agent.identity import CERT_FILE, REVOKED_FILE, DeviceIdentity
from edge_agent.link.client import ControllerLink, DeviceRevoked, LinkError
from fedge_common.files import atomic_write
from fedge_protocol.lifecycle import DEVICE_STATUS_REVOKED

log = logging.getLogger("fedge.agent.lifecycle")

PREVIOUS_CERT_FILE = "device.pem.prev"
ACTIVE = "active"


class RenewalRefused(Exception):
    """The controller's renewed certificate does not check out (kept the current one)."""


def _spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


class Lifecycle:
    """Revoked or not (persisted), whether inference is served, and certificate renewal."""

    def __init__(
        self,
        state_dir: Path,
        *,
        keep_serving_when_revoked: bool = False,
        renew_fraction: float = 0.3,
        renew_retry_seconds: float = 60.0,
    ) -> None:
        self.state_dir = state_dir
        self.keep_serving_when_revoked = keep_serving_when_revoked
        self.renew_fraction, self.renew_retry_seconds = renew_fraction, renew_retry_seconds
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []
        self._renewed: list[Callable[[], None]] = []
        self._revoked = self._read_marker()
        if self._revoked is not None:
            log.error("this device was revoked at %s: not contacting the controller", self._revoked["at"])
        self.renewals = 0
        self.renewed_at: str | None = None
        self.renew_error: str | None = None
        self._next_try = 0.0

    # ------------------------------------------------------------- revocation
    def _read_marker(self) -> dict[str, Any] | None:
        try:
            marker = json.loads((self.state_dir / REVOKED_FILE).read_text())
        except FileNotFoundError:
            return None
        except ValueError:  # unreadable marker: still revoked (it is only ever written whole)
            return {"at": None, "detail": "unreadable revocation marker"}
        return marker if isinstance(marker, dict) else {"at": None, "detail": "revoked"}

    @property
    def revoked(self) -> bool:
        return self._revoked is not None

    @property
    def serving(self) -> bool:
        """Whether the local API answers inference."""
        return self._revoked is None or self.keep_serving_when_revoked

    def on_revoked(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once when the device learns it was revoked (not on a restart)."""
        self._listeners.append(callback)

    def mark_revoked(self, detail: str) -> None:
        """Persist the revocation (atomically), log it once, tell the listeners."""
        with self._lock:
            if self._revoked is not None:
                return
            marker = {"at": dt.datetime.now(dt.UTC).isoformat(), "detail": detail}
            atomic_write(self.state_dir / REVOKED_FILE, json.dumps(marker).encode())
            self._revoked = marker
        log.error(
            "the controller revoked this device (%s): polling stopped; inference %s",
            detail,
            "still served (keep_serving_when_revoked)" if self.keep_serving_when_revoked else "refused",
        )
        for callback in self._listeners:
            try:
                callback()
            except Exception:
                log.exception("revocation listener failed")

    # ---------------------------------------------------------------- renewal
    def _certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate((self.state_dir / CERT_FILE).read_bytes())

    def renewal_due(self, cert: x509.Certificate, now: dt.datetime | None = None) -> bool:
        """True when less than ``renew_fraction`` of the certificate's lifetime is left."""
        now = now or dt.datetime.now(dt.UTC)
        lifetime = (cert.not_valid_after_utc - cert.not_valid_before_utc).total_seconds()
        left = (cert.not_valid_after_utc - now).total_seconds()
        return left < self.renew_fraction * lifetime

    def maybe_renew(self, link: ControllerLink) -> bool:
        """Renew when due (a failed try is retried after ``renew_retry_seconds``); True when renewed."""
        if self.revoked or time.monotonic() < self._next_try:
            return False
        try:
            if not self.renewal_due(self._certificate()):
                return False
        except (OSError, ValueError) as exc:  # no certificate to renew (not enrolled the usual way)
            log.debug("no certificate renewal: %s", exc)
            return False
        try:
            self.renew(link)
        except DeviceRevoked:
            raise
        except (LinkError, RenewalRefused) as exc:
            self.renew_error = str(exc)
            self._next_try = time.monotonic() + self.renew_retry_seconds
            log.warning("certificate renewal failed (%s); next try in %.0fs", exc, self.renew_retry_seconds)
            return False
        return True

    def renew(self, link: ControllerLink) -> x509.Certificate:
        """Send a CSR signed with the device key; check the answer; swap ``device.pem`` atomically."""
        identity = link.identity
        old_pem = (self.state_dir / CERT_FILE).read_bytes()
        old = x509.load_pem_x509_certificate(old_pem)
        answer = link.renew_certificate(identity.csr())
        try:
            new = x509.load_pem_x509_certificate(str(answer.get("certificate", "")).encode())
        except ValueError as exc:
            raise RenewalRefused(f"the renewed certificate is not PEM: {exc}") from exc
        try:
            new.verify_directly_issued_by(identity.ca_certificate)
        except (ValueError, TypeError) as exc:
            raise RenewalRefused(f"the renewed certificate is not signed by the pinned CA: {exc}") from exc
        if _spki(new) != _spki(old):
            raise RenewalRefused("the renewed certificate is not for this device's key")
        cn = new.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        if cn != identity.device_id:
            raise RenewalRefused(f"the renewed certificate is for {cn!r}, not {identity.device_id}")
        if new.not_valid_after_utc <= old.not_valid_after_utc:
            raise RenewalRefused("the renewed certificate does not outlive the current one")
        atomic_write(self.state_dir / PREVIOUS_CERT_FILE, old_pem)
        atomic_write(self.state_dir / CERT_FILE, new.public_bytes(serialization.Encoding.PEM))
        link.use_identity(DeviceIdentity.load(self.state_dir))
        self.renewals += 1
        self.renewed_at, self.renew_error = dt.datetime.now(dt.UTC).isoformat(), None
        log.info("certificate renewed: serial %x, valid until %s", new.serial_number, new.not_valid_after_utc)
        for callback in self._renewed:
            callback()
        return new

    def on_renewed(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` after each renewal (the MQTT link reloads its TLS certificate)."""
        self._renewed.append(callback)

    # ----------------------------------------------------------------- status
    def status(self) -> dict[str, Any]:
        """What ``GET /v1/status`` of the local API shows about the lifecycle."""
        try:
            cert: x509.Certificate | None = self._certificate()
        except (FileNotFoundError, ValueError):
            cert = None
        return {
            "state": DEVICE_STATUS_REVOKED if self.revoked else ACTIVE,
            "revoked": self._revoked,
            "serving": self.serving,
            "certificate": None
            if cert is None
            else {
                "serial": format(cert.serial_number, "x"),
                "not_after": cert.not_valid_after_utc.isoformat(),
                "renewal_due": self.renewal_due(cert),
                "renewals": self.renewals,
                "renewed_at": self.renewed_at,
                "last_error": self.renew_error,
            },
        }
